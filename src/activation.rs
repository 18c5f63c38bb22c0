//! Socket activation: taking the listening sockets that warden (or systemd, or any launcher that
//! speaks systemd's protocol) bound for this program and passed to it.
//!
//! # The protocol
//!
//! The launcher binds the sockets, then starts the program with them open on descriptors
//! `3, 4, …` and three environment variables, as `sd_listen_fds(3)` describes:
//!
//! - `LISTEN_PID`: the pid the descriptors are meant for. A process whose pid differs (a child
//!   that inherited the environment, a daemon after its double fork) was passed nothing.
//! - `LISTEN_FDS`: how many descriptors, from 3 upwards (a positive decimal number).
//! - `LISTEN_FDNAMES` (optional): their names, separated by `:` — in warden, the `NAME` of each
//!   `[socket.NAME]` table listed in the program's `sockets`, in that order.
//!
//! [`listen_fds`] reads them and returns each descriptor as an owned [`ListenFd`] with its name;
//! [`ListenFd::into_tcp_listener`] and [`ListenFd::into_unix_listener`] turn one into a std
//! listener after checking what it is, and [`take`] picks one by name:
//!
//! ```no_run
//! use std::net::TcpListener;
//! use warden::activation;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main: before the program opens any file or starts a thread.
//!     let mut fds = activation::listen_fds()?;
//!     let web = match activation::take(&mut fds, "web") {
//!         Some(fd) => fd.into_tcp_listener()?,
//!         // Not socket-activated (started by hand, say): bind our own.
//!         None => TcpListener::bind("127.0.0.1:8080")?,
//!     };
//!     for conn in web.incoming() {
//!         let _conn = conn?; // serve it
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Once per process
//!
//! The descriptors become owned values, so they can be taken only once: the first call of
//! [`listen_fds`] that finds descriptors for this process takes them, and every later call
//! returns [`ActivationError::AlreadyTaken`] (a second call that quietly returned nothing would
//! let a program bind a port of its own beside the one it was given). A process that was passed
//! nothing gets an empty list every time. Call it early in `main`, before opening anything: the
//! descriptors are checked to be open and not close-on-exec (a descriptor inherited across
//! `exec` never is, whereas std opens every file close-on-exec), which catches a number this
//! process already reused, but cannot catch code that took the same descriptors by their
//! numbers (another `sd_listen_fds` library): use one or the other.
//!
//! # The environment stays
//!
//! Unlike `sd_listen_fds(3)` asked to (`unset_environment`), this never unsets the variables:
//! changing the environment is unsound once a program has more than one thread
//! (`std::env::remove_var` is `unsafe`). That is harmless: the descriptors are made close-on-exec when taken, so the programs this process
//! runs do not inherit them, and `LISTEN_PID` names this process, not theirs, so an
//! `sd_listen_fds` in a child finds nothing. Clear the three variables in a child's
//! [`Command`](std::process::Command) (`env_remove`) if it should not see them at all.
//!
//! # Not taken here
//!
//! The descriptors are as the launcher left them: blocking, unless it set `O_NONBLOCK` (call
//! `set_nonblocking` before handing a listener to an async runtime). Sockets other than
//! listening TCP and Unix stream sockets (UDP, datagram, sequential packet) and FIFOs are
//! returned like the others; take them with [`OwnedFd::from`] and convert them yourself.
//! systemd's newer `LISTEN_PIDFDID` is not read.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{self, AddressFamily, SockType, SockaddrLike, SockaddrStorage, sockopt};

use crate::sys::fd::{Unclaimable, claim_inherited_fds};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Set by the call of [`listen_fds`] that takes the descriptors.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// One descriptor passed by the launcher, owned, with its name from `LISTEN_FDNAMES`.
///
/// It is close-on-exec. Dropping it closes it.
#[derive(Debug)]
pub struct ListenFd {
    fd: OwnedFd,
    name: Option<String>,
}

/// What a passed descriptor is, as far as this module can turn it into a std type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketKind {
    /// A listening TCP socket (IPv4 or IPv6): [`ListenFd::into_tcp_listener`].
    TcpListener,
    /// A listening Unix stream socket: [`ListenFd::into_unix_listener`].
    UnixListener,
    /// Anything else (a datagram socket, a stream socket that is not listening, a FIFO…).
    Other,
}

/// Why the passed descriptors, or one of them, could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// A variable of the protocol holds something it cannot hold.
    #[error("{var}={value:?} is not {expected}")]
    Malformed {
        /// The variable: `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`.
        var: &'static str,
        /// Its value (lossily decoded if it is not UTF-8).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// `LISTEN_FDNAMES` does not name as many descriptors as `LISTEN_FDS` passes.
    #[error("LISTEN_FDNAMES names {names} descriptors, but LISTEN_FDS={fds}")]
    NameCount {
        /// `LISTEN_FDS`.
        fds: u32,
        /// How many names `LISTEN_FDNAMES` holds.
        names: usize,
    },
    /// An earlier call of [`listen_fds`] took the descriptors already.
    #[error("the socket-activation descriptors were taken already (listen_fds() called twice)")]
    AlreadyTaken,
    /// A descriptor `LISTEN_FDS` announces is not open.
    #[error("descriptor {fd} is not open, but LISTEN_FDS={fds} announces it")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// `LISTEN_FDS`.
        fds: u32,
    },
    /// A descriptor `LISTEN_FDS` announces was opened by this process, not inherited: it is
    /// close-on-exec.
    #[error(
        "descriptor {fd} is close-on-exec, so this process opened it itself rather than \
         inheriting it (call listen_fds() first in main, before opening anything)"
    )]
    NotInherited {
        /// The descriptor.
        fd: RawFd,
    },
    /// A system call on a descriptor failed.
    #[error("descriptor {fd}: {source}")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// What failed.
        source: io::Error,
    },
    /// The descriptor is not what the conversion asked for.
    #[error("descriptor {fd}{} is {found}, not {expected}", name_suffix(.name))]
    WrongKind {
        /// The descriptor.
        fd: RawFd,
        /// Its name, if it has one.
        name: Option<String>,
        /// What was asked for, e.g. "a listening TCP socket".
        expected: &'static str,
        /// What it is, e.g. "a Unix stream socket that is not listening".
        found: String,
    },
}

fn name_suffix(name: &Option<String>) -> String {
    match name {
        Some(n) => format!(" ({n:?})"),
        None => String::new(),
    }
}

/// Takes the descriptors passed to this process by socket activation, in order (descriptor 3
/// first), each with its name.
///
/// Returns an empty list when nothing was passed to this process: `LISTEN_PID` unset or not
/// this process's pid, or `LISTEN_FDS` unset. Fails when a variable is malformed (`LISTEN_FDS`
/// not a positive number, `LISTEN_FDNAMES` with a different number of names), when a
/// descriptor announced is not open or was not inherited, and on every call after the one that
/// took them ([`ActivationError::AlreadyTaken`]; see the [module documentation](self)).
///
/// The environment is left as it is.
///
/// ```no_run
/// for fd in warden::activation::listen_fds()? {
///     println!("{:?}: {:?}", fd.name(), fd.kind());
/// }
/// # Ok::<(), warden::activation::ActivationError>(())
/// ```
pub fn listen_fds() -> Result<Vec<ListenFd>, ActivationError> {
    let pid = std::env::var_os("LISTEN_PID");
    let fds = std::env::var_os("LISTEN_FDS");
    let names = std::env::var_os("LISTEN_FDNAMES");
    let Some(passed) = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::AlreadyTaken);
    }
    let owned = claim_inherited_fds(passed.range()).map_err(|(fd, why)| match why {
        Unclaimable::NotOpen => ActivationError::NotOpen {
            fd,
            fds: passed.count,
        },
        Unclaimable::CloseOnExec => ActivationError::NotInherited { fd },
        Unclaimable::Io(source) => ActivationError::Io { fd, source },
    })?;
    Ok(owned
        .into_iter()
        .zip(passed.names())
        .map(|(fd, name)| ListenFd { fd, name })
        .collect())
}

/// Removes the first descriptor named `name` from `fds` and returns it (`None` when none has
/// that name). A launcher may give several descriptors one name (systemd names each of a
/// socket unit's sockets after the unit): call it again for the next one.
///
/// ```no_run
/// let mut fds = warden::activation::listen_fds()?;
/// let admin = warden::activation::take(&mut fds, "admin").map(|fd| fd.into_unix_listener());
/// # Ok::<(), warden::activation::ActivationError>(())
/// ```
pub fn take(fds: &mut Vec<ListenFd>, name: &str) -> Option<ListenFd> {
    let pos = fds.iter().position(|fd| fd.name() == Some(name))?;
    Some(fds.remove(pos))
}

impl ListenFd {
    /// Its name from `LISTEN_FDNAMES` (which may be empty), or `None` when that variable is
    /// unset.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// What it is: a listening TCP socket, a listening Unix stream socket, or something else.
    pub fn kind(&self) -> SocketKind {
        match Found::of(self.fd.as_fd()) {
            Ok(found) => found.kind(),
            Err(_) => SocketKind::Other,
        }
    }

    /// The listening TCP socket (IPv4 or IPv6) it is, or [`ActivationError::WrongKind`] saying
    /// what it is instead (the descriptor is closed then).
    ///
    /// ```no_run
    /// let fd = warden::activation::listen_fds()?.into_iter().next().expect("one socket");
    /// let listener: std::net::TcpListener = fd.into_tcp_listener()?;
    /// # Ok::<(), warden::activation::ActivationError>(())
    /// ```
    pub fn into_tcp_listener(self) -> Result<TcpListener, ActivationError> {
        self.checked(SocketKind::TcpListener, "a listening TCP socket")
            .map(TcpListener::from)
    }

    /// The listening Unix stream socket it is, or [`ActivationError::WrongKind`] saying what it
    /// is instead (the descriptor is closed then).
    ///
    /// ```no_run
    /// let fd = warden::activation::listen_fds()?.into_iter().next().expect("one socket");
    /// let listener: std::os::unix::net::UnixListener = fd.into_unix_listener()?;
    /// # Ok::<(), warden::activation::ActivationError>(())
    /// ```
    pub fn into_unix_listener(self) -> Result<UnixListener, ActivationError> {
        self.checked(SocketKind::UnixListener, "a listening Unix stream socket")
            .map(UnixListener::from)
    }

    /// The descriptor itself, whatever it is.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }

    fn checked(self, kind: SocketKind, expected: &'static str) -> Result<OwnedFd, ActivationError> {
        let fd = self.fd.as_raw_fd();
        let found =
            Found::of(self.fd.as_fd()).map_err(|source| ActivationError::Io { fd, source })?;
        if found.kind() == kind {
            return Ok(self.fd);
        }
        Err(ActivationError::WrongKind {
            fd,
            name: self.name,
            expected,
            found: found.to_string(),
        })
    }
}

impl AsFd for ListenFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ListenFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<ListenFd> for OwnedFd {
    fn from(fd: ListenFd) -> OwnedFd {
        fd.fd
    }
}

/// What a descriptor turned out to be, for [`SocketKind`] and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Not a socket (`ENOTSOCK`).
    NotSocket,
    Socket {
        family: Option<AddressFamily>,
        ty: Option<SockType>,
        listening: bool,
    },
}

impl Found {
    fn of(fd: BorrowedFd<'_>) -> io::Result<Found> {
        let ty = match socket::getsockopt(&fd, sockopt::SockType) {
            Ok(ty) => Some(ty),
            Err(nix::errno::Errno::ENOTSOCK) => return Ok(Found::NotSocket),
            // A type nix has no name for (SOCK_DCCP, SOCK_PACKET…).
            Err(nix::errno::Errno::EINVAL) => None,
            Err(e) => return Err(e.into()),
        };
        let listening = socket::getsockopt(&fd, sockopt::AcceptConn)?;
        let family = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())?.family();
        Ok(Found::Socket {
            family,
            ty,
            listening,
        })
    }

    fn kind(self) -> SocketKind {
        match self {
            Found::Socket {
                family: Some(AddressFamily::Inet | AddressFamily::Inet6),
                ty: Some(SockType::Stream),
                listening: true,
            } => SocketKind::TcpListener,
            Found::Socket {
                family: Some(AddressFamily::Unix),
                ty: Some(SockType::Stream),
                listening: true,
            } => SocketKind::UnixListener,
            _ => SocketKind::Other,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Found::Socket {
            family,
            ty,
            listening,
        } = *self
        else {
            return f.write_str("not a socket");
        };
        let what = match (family, ty) {
            (Some(AddressFamily::Inet | AddressFamily::Inet6), Some(SockType::Stream)) => "a TCP",
            (Some(AddressFamily::Inet | AddressFamily::Inet6), Some(SockType::Datagram)) => "a UDP",
            (Some(AddressFamily::Unix), Some(SockType::Stream)) => "a Unix stream",
            (Some(AddressFamily::Unix), Some(SockType::Datagram)) => "a Unix datagram",
            (Some(AddressFamily::Unix), Some(SockType::SeqPacket)) => "a Unix seqpacket",
            _ => "a",
        };
        f.write_str(what)?;
        f.write_str(" socket")?;
        if matches!(ty, Some(SockType::Stream | SockType::SeqPacket)) && !listening {
            f.write_str(" that is not listening")?;
        }
        Ok(())
    }
}

/// What the environment passes to this process: descriptors `3 .. 3 + count`, with their names
/// when `LISTEN_FDNAMES` is set (then exactly `count` of them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Passed {
    count: u32,
    names: Option<Vec<String>>,
}

impl Passed {
    fn range(&self) -> std::ops::Range<RawFd> {
        // `parse` keeps the last descriptor within RawFd.
        LISTEN_FDS_START..LISTEN_FDS_START + self.count as RawFd
    }

    /// One name per descriptor, in order.
    fn names(&self) -> impl Iterator<Item = Option<String>> + '_ {
        let given = self.names.iter().flatten().cloned().map(Some);
        given
            .chain(std::iter::repeat(None))
            .take(self.count as usize)
    }
}

/// Reads the protocol's variables as `sd_listen_fds_with_names` does, for the process `my_pid`:
/// `None` when nothing is passed to it; an error when a variable it must read is malformed.
///
/// `LISTEN_PID` is read first: unset, or another pid, means nothing passed (and the other two
/// are not read). Then `LISTEN_FDS`: unset means nothing; otherwise a positive decimal number
/// (digits only) whose last descriptor fits in an `int`. Then `LISTEN_FDNAMES`, when set:
/// exactly one name per descriptor, separated by `:`, empty names allowed.
fn parse(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
    my_pid: u32,
) -> Result<Option<Passed>, ActivationError> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid = number("LISTEN_PID", pid, "a pid (a positive decimal number)")?;
    if pid != my_pid {
        return Ok(None);
    }
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    let count = number(
        "LISTEN_FDS",
        fds,
        "a number of descriptors (a positive decimal number)",
    )?;
    if count > (RawFd::MAX - LISTEN_FDS_START) as u32 {
        return Err(malformed(
            "LISTEN_FDS",
            fds,
            "a number of descriptors that fits after descriptor 3",
        ));
    }
    let names = match listen_fdnames {
        None => None,
        Some(raw) => {
            let text = raw
                .to_str()
                .ok_or_else(|| malformed("LISTEN_FDNAMES", raw, "UTF-8"))?;
            let names: Vec<String> = text.split(':').map(str::to_string).collect();
            if names.len() != count as usize {
                return Err(ActivationError::NameCount {
                    fds: count,
                    names: names.len(),
                });
            }
            Some(names)
        }
    };
    Ok(Some(Passed { count, names }))
}

/// A positive decimal number of digits only (no sign, no space), within `u32`.
fn number(var: &'static str, raw: &OsStr, expected: &'static str) -> Result<u32, ActivationError> {
    let bad = || malformed(var, raw, expected);
    let text = raw.to_str().ok_or_else(bad)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    }
}

fn malformed(var: &'static str, raw: &OsStr, expected: &'static str) -> ActivationError {
    ActivationError::Malformed {
        var,
        value: raw.to_string_lossy().into_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use proptest::prelude::*;

    use super::*;

    const ME: u32 = 4242;

    /// `parse` for this process (`ME`), with every variable given as text or unset.
    fn env(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<Passed>, ActivationError> {
        parse(
            pid.map(OsStr::new),
            fds.map(OsStr::new),
            names.map(OsStr::new),
            ME,
        )
    }

    /// The descriptors and names passed, as `listen_fds` would pair them.
    fn passed(pid: &str, fds: &str, names: Option<&str>) -> Vec<(RawFd, Option<String>)> {
        let p = env(Some(pid), Some(fds), names)
            .expect("well-formed")
            .expect("passed to ME");
        p.range().zip(p.names()).collect()
    }

    fn error(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> String {
        env(pid, fds, names).expect_err("malformed").to_string()
    }

    fn named(fds: &[(RawFd, &str)]) -> Vec<(RawFd, Option<String>)> {
        fds.iter()
            .map(|&(fd, n)| (fd, Some(n.to_string())))
            .collect()
    }

    #[test]
    fn nothing_is_passed_without_listen_pid() {
        assert!(env(None, Some("2"), Some("a:b")).unwrap().is_none());
        assert!(env(None, None, None).unwrap().is_none());
    }

    #[test]
    fn descriptors_for_another_pid_are_not_ours_and_not_even_read() {
        assert!(env(Some("4243"), Some("1"), None).unwrap().is_none());
        // As sd_listen_fds: LISTEN_FDS is not looked at for another process.
        assert!(
            env(Some("1"), Some("garbage"), Some("x:y"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn nothing_is_passed_without_listen_fds() {
        assert!(env(Some("4242"), None, Some("web")).unwrap().is_none());
    }

    #[test]
    fn listen_pid_must_be_a_positive_decimal_number() {
        for bad in [
            "",
            "abc",
            "0",
            "-4242",
            "+4242",
            " 4242",
            "4242 ",
            "4242\n",
            "0x10",
            "99999999999",
        ] {
            let msg = error(Some(bad), Some("1"), None);
            assert!(
                msg.starts_with(&format!("LISTEN_PID={bad:?} is not a pid")),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn listen_fds_counts_descriptors_from_3() {
        assert_eq!(passed("4242", "1", None), vec![(3, None)]);
        assert_eq!(
            passed("4242", "3", None),
            vec![(3, None), (4, None), (5, None)]
        );
        // Leading zeros are still decimal.
        assert_eq!(passed("04242", "02", None), vec![(3, None), (4, None)]);
    }

    #[test]
    fn listen_fds_must_be_a_positive_decimal_number() {
        for bad in ["", "0", "-1", "+1", "x", "1.5", " 1", "1 ", "4294967296"] {
            let msg = error(Some("4242"), Some(bad), None);
            assert!(
                msg.starts_with(&format!(
                    "LISTEN_FDS={bad:?} is not a number of descriptors"
                )),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn the_last_descriptor_must_fit_in_an_int() {
        let most = (i32::MAX - 3) as u32;
        let p = env(Some("4242"), Some(&most.to_string()), None)
            .unwrap()
            .unwrap();
        assert_eq!(p.range().end, i32::MAX);
        let msg = error(Some("4242"), Some(&(most + 1).to_string()), None);
        assert!(msg.contains("fits after descriptor 3"), "{msg}");
    }

    #[test]
    fn names_follow_the_descriptors_in_order() {
        assert_eq!(
            passed("4242", "2", Some("web:admin")),
            named(&[(3, "web"), (4, "admin")])
        );
    }

    #[test]
    fn empty_names_are_names() {
        assert_eq!(passed("4242", "1", Some("")), named(&[(3, "")]));
        assert_eq!(
            passed("4242", "3", Some("web::")),
            named(&[(3, "web"), (4, ""), (5, "")])
        );
    }

    #[test]
    fn the_names_must_be_as_many_as_the_descriptors() {
        assert_eq!(
            error(Some("4242"), Some("2"), Some("web")),
            "LISTEN_FDNAMES names 1 descriptors, but LISTEN_FDS=2"
        );
        assert_eq!(
            error(Some("4242"), Some("1"), Some("a:b")),
            "LISTEN_FDNAMES names 2 descriptors, but LISTEN_FDS=1"
        );
    }

    #[test]
    fn values_that_are_not_utf8_are_malformed() {
        let bad = OsStr::from_bytes(b"web\xff");
        let err = parse(
            Some(OsStr::new("4242")),
            Some(OsStr::new("1")),
            Some(bad),
            ME,
        );
        assert!(
            matches!(
                err,
                Err(ActivationError::Malformed {
                    var: "LISTEN_FDNAMES",
                    ..
                })
            ),
            "{err:?}"
        );
        let err = parse(Some(OsStr::from_bytes(b"\xff")), None, None, ME);
        assert!(
            matches!(
                err,
                Err(ActivationError::Malformed {
                    var: "LISTEN_PID",
                    ..
                })
            ),
            "{err:?}"
        );
    }

    /// A descriptor of each kind, owned here, as a `ListenFd` named `name`.
    fn listen_fd(fd: impl Into<OwnedFd>, name: &str) -> ListenFd {
        ListenFd {
            fd: fd.into(),
            name: Some(name.to_string()),
        }
    }

    fn temp_socket_path(tag: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "warden-activation-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_listening_tcp_socket_becomes_a_tcp_listener() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let fd = listen_fd(tcp, "web");
        assert_eq!(fd.kind(), SocketKind::TcpListener);
        assert_eq!(fd.into_tcp_listener().unwrap().local_addr().unwrap(), addr);
    }

    #[test]
    fn a_listening_unix_socket_becomes_a_unix_listener() {
        let path = temp_socket_path("unix");
        let unix = UnixListener::bind(&path).unwrap();
        let fd = listen_fd(unix, "admin");
        assert_eq!(fd.kind(), SocketKind::UnixListener);
        assert!(fd.into_unix_listener().is_ok());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_conversion_to_the_wrong_kind_says_what_the_descriptor_is() {
        let path = temp_socket_path("wrong");
        let unix = UnixListener::bind(&path).unwrap();
        let raw = unix.as_raw_fd();
        let err = listen_fd(unix, "admin").into_tcp_listener().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "descriptor {raw} (\"admin\") is a Unix stream socket, not a listening TCP socket"
            )
        );
        let _ = std::fs::remove_file(&path);

        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listen_fd(tcp, "web").into_unix_listener().unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is a TCP socket, not a listening Unix stream socket"),
            "{err}"
        );
    }

    #[test]
    fn what_is_not_a_listener_is_described() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = listen_fd(udp, "dns");
        assert_eq!(fd.kind(), SocketKind::Other);
        let err = fd.into_tcp_listener().unwrap_err().to_string();
        assert!(err.contains("is a UDP socket, not"), "{err}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = listen_fd(a, "pair")
            .into_unix_listener()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a Unix stream socket that is not listening, not"),
            "{err}"
        );

        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = listen_fd(file, "null");
        assert_eq!(fd.kind(), SocketKind::Other);
        let err = fd.into_tcp_listener().unwrap_err().to_string();
        assert!(err.contains("is not a socket, not"), "{err}");
    }

    #[test]
    fn take_removes_the_first_descriptor_of_that_name() {
        let mut fds = vec![
            listen_fd(std::fs::File::open("/dev/null").unwrap(), "web"),
            listen_fd(std::fs::File::open("/dev/null").unwrap(), "admin"),
            listen_fd(std::fs::File::open("/dev/null").unwrap(), "web"),
        ];
        let first = fds[0].as_raw_fd();
        assert_eq!(take(&mut fds, "web").unwrap().as_raw_fd(), first);
        assert!(take(&mut fds, "web").is_some());
        assert!(take(&mut fds, "web").is_none());
        assert!(take(&mut fds, "nope").is_none());
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].name(), Some("admin"));
    }

    proptest! {
        #[test]
        fn descriptors_and_names_pair_up_in_order(
            names in proptest::collection::vec("[a-zA-Z0-9_.-]{0,12}", 1..40),
        ) {
            let got = passed("4242", &names.len().to_string(), Some(&names.join(":")));
            let want: Vec<(RawFd, Option<String>)> =
                (3..).zip(names.iter().cloned().map(Some)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn any_positive_count_that_fits_is_taken_as_is(count in 1u32..=(i32::MAX - 3) as u32) {
            let p = env(Some("4242"), Some(&count.to_string()), None).unwrap().unwrap();
            prop_assert_eq!(p.count, count);
            prop_assert_eq!(p.range().len(), count as usize);
        }

        #[test]
        fn another_process_is_passed_nothing_whatever_the_rest_says(
            pid in 1u32..,
            fds in proptest::option::of(".*"),
            names in proptest::option::of(".*"),
        ) {
            prop_assume!(pid != ME);
            let got = env(Some(&pid.to_string()), fds.as_deref(), names.as_deref());
            prop_assert!(matches!(got, Ok(None)));
        }

        #[test]
        fn a_count_that_is_not_plain_digits_is_refused(fds in ".*") {
            prop_assume!(!fds.bytes().all(|b| b.is_ascii_digit()) || fds.is_empty());
            let got = env(Some("4242"), Some(&fds), None);
            prop_assert!(
                matches!(got, Err(ActivationError::Malformed { var: "LISTEN_FDS", .. })),
                "{:?}",
                got
            );
        }
    }
}
