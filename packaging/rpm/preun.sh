# warden.rpm %preun ($1: versions left after this one; 0 on erase, 1 on upgrade). On erase,
# stop warden and every program it runs (%systemd_preun's `disable --now`, or the init script),
# and then directly if something still runs: the binary is about to disappear, and a daemon
# left running could no longer be stopped by any command.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now warden.service >/dev/null 2>&1 || :
    else
        if [ -x /etc/rc.d/init.d/warden ]; then
            /etc/rc.d/init.d/warden stop || :
        fi
        if command -v chkconfig >/dev/null 2>&1; then
            chkconfig --del warden || :
        fi
    fi
    if [ -x /usr/bin/warden ] && /usr/bin/warden status >/dev/null 2>&1; then
        /usr/bin/warden stop --timeout 90s || :
    fi
fi
