# warden.rpm %post ($1: how many versions are installed after this one; 1 on a new
# installation). cargo-generate-rpm does not expand %systemd_post: this is its expansion, and
# the SysV one (chkconfig) for machines without systemd. Also the directories that
# cargo-generate-rpm cannot put in the payload (see Cargo.toml).
mkdir -p /etc/warden/conf.d
chmod 0755 /etc/warden/conf.d
if [ ! -d /var/log/warden ]; then
    mkdir -p /var/log/warden
    chmod 0750 /var/log/warden
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        # %systemd_post: enable according to the distribution's preset policy.
        systemctl --no-reload preset warden.service >/dev/null 2>&1 || :
    fi
elif [ "$1" -eq 1 ] && command -v chkconfig >/dev/null 2>&1; then
    chkconfig --add warden || :
fi
