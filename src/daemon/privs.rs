//! Users, groups and the privilege drop.
//!
//! Names are resolved in the launcher, before any fork, so a typo fails the launching command with
//! the name in the message. The drop itself happens in the daemon after the pidfile is written:
//! supplementary groups first (`initgroups`, or `setgroups` to the one group), then `setgid`, then
//! `setuid` — the reverse order would leave us unable to change groups — and finally a check that
//! root cannot be regained.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{Error, Result};

/// Who the daemon runs as, resolved before forking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user, when one was asked for.
    pub user: Option<(CString, Uid)>,
    /// The group: the one asked for, else the user's primary group.
    pub gid: Gid,
}

impl Credentials {
    /// Resolves `user` and `group` (names or numeric ids). `None` when neither is given.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Credentials>> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let user = match user {
            None => None,
            Some(name) => Some(lookup_user(name)?),
        };
        let gid = match (group, &user) {
            (Some(name), _) => lookup_group(name)?,
            (None, Some(u)) => u.gid,
            (None, None) => unreachable!("checked above"),
        };
        Ok(Some(Credentials {
            user: user.map(|u| {
                (
                    CString::new(u.name).expect("user names from getpwnam have no NUL"),
                    u.uid,
                )
            }),
            gid,
        }))
    }

    /// The uid the daemon will have.
    pub fn uid(&self) -> Uid {
        self.user
            .as_ref()
            .map_or_else(Uid::current, |(_, uid)| *uid)
    }

    /// Drops to these credentials and checks that root cannot be regained.
    ///
    /// Unprivileged callers may only "drop" to who they already are.
    pub fn drop_privileges(&self) -> Result<()> {
        let uid = self.uid();
        if !Uid::effective().is_root() {
            if uid == Uid::current() && self.gid == Gid::current() {
                return Ok(());
            }
            return Err(Error::PrivilegeDrop(format!(
                "only root can change to uid {uid} gid {}; warden runs as uid {}",
                self.gid,
                Uid::effective()
            )));
        }
        match &self.user {
            Some((name, _)) => {
                nix::unistd::initgroups(name, self.gid).map_err(|e| Error::sys("initgroups", e))?
            }
            None => nix::unistd::setgroups(&[self.gid]).map_err(|e| Error::sys("setgroups", e))?,
        }
        nix::unistd::setgid(self.gid).map_err(|e| Error::sys("setgid", e))?;
        nix::unistd::setuid(uid).map_err(|e| Error::sys("setuid", e))?;
        if Uid::current() != uid || Uid::effective() != uid || Gid::effective() != self.gid {
            return Err(Error::PrivilegeDrop(format!(
                "ids are uid {}/{} gid {} after switching to uid {uid} gid {}",
                Uid::current(),
                Uid::effective(),
                Gid::effective(),
                self.gid
            )));
        }
        // Staying root (only `group` given, or `user = "root"`) keeps the power to change ids:
        // there is nothing to verify then.
        if uid.is_root() {
            return Ok(());
        }
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(Error::PrivilegeDrop(
                "setuid(0) succeeded after dropping root".into(),
            ));
        }
        if self.gid.as_raw() != 0 && nix::unistd::setgid(Gid::from_raw(0)).is_ok() {
            return Err(Error::PrivilegeDrop(
                "setgid(0) succeeded after dropping root".into(),
            ));
        }
        Ok(())
    }
}

fn lookup_user(name: &str) -> Result<User> {
    let found = match name.parse::<u32>() {
        Ok(id) => User::from_uid(Uid::from_raw(id)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(Error::UnknownUser(name.to_string())),
        Err(e) => Err(Error::sys("getpwnam", e)),
    }
}

fn lookup_group(name: &str) -> Result<Gid> {
    let found = match name.parse::<u32>() {
        Ok(id) => Group::from_gid(Gid::from_raw(id)),
        Err(_) => Group::from_name(name),
    };
    match found {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(Error::UnknownGroup(name.to_string())),
        Err(e) => Err(Error::sys("getgrnam", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_reported_by_name() {
        let e = Credentials::resolve(Some("no-such-user-warden"), None).unwrap_err();
        assert_eq!(e.to_string(), "unknown user \"no-such-user-warden\"");
        let e = Credentials::resolve(None, Some("no-such-group-warden")).unwrap_err();
        assert_eq!(e.to_string(), "unknown group \"no-such-group-warden\"");
    }

    #[test]
    fn root_resolves_with_primary_group() {
        let c = Credentials::resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(c.uid(), Uid::from_raw(0));
        assert_eq!(c.gid, Gid::from_raw(0));
        assert_eq!(Credentials::resolve(None, None).unwrap(), None);
    }
}
