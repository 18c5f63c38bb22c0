# warden.rpm %postun ($1: versions left; 0 on erase, 1 on upgrade). On upgrade, a running
# warden is upgraded in place (`warden upgrade`: same pid, programs untouched); if that is
# refused, it is restarted with the new binary (%systemd_postun_with_restart, or the init
# script's try-restart); on erase, remove its runtime directory, and the directories %post made once
# they are empty: drop-ins of other packages or the administrator, and logs, stay, as rpm
# (which has no purge) leaves them.
upgraded=no
if [ "$1" -ge 1 ] && [ -x /usr/bin/warden ] && /usr/bin/warden status >/dev/null 2>&1 &&
    /usr/bin/warden upgrade --timeout 60s >/dev/null 2>&1; then
    upgraded=yes
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ] && [ "$upgraded" = no ]; then
        systemctl try-restart warden.service >/dev/null 2>&1 || :
    fi
elif [ "$1" -ge 1 ] && [ "$upgraded" = no ] && [ -x /etc/rc.d/init.d/warden ]; then
    /etc/rc.d/init.d/warden try-restart >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    rm -rf /run/warden
    rmdir /etc/warden/conf.d /etc/warden /var/log/warden 2>/dev/null || :
fi
