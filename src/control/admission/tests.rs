//! The admission rule's specification: one test per rule, the open connections as arguments.

use super::*;

/// Four in all, one per read-only uid, two more for full access.
const LIMITS: ConnectionLimits = ConnectionLimits {
    total: 4,
    per_uid: 1,
    reserved: 2,
};

fn peer(access: Access) -> Peer {
    Peer {
        pid: 4242,
        uid: 1000,
        gid: 1000,
        access,
    }
}

fn open(open: usize, of_uid: usize) -> ConnCounts {
    ConnCounts { open, of_uid }
}

#[test]
fn a_denied_peer_is_denied_even_with_nothing_open() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Denied), open(0, 0)),
        Admission::Denied
    );
}

#[test]
fn a_denied_peer_is_denied_rather_than_busy_when_over_the_limits() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Denied), open(9, 9)),
        Admission::Denied
    );
}

#[test]
fn a_full_peer_is_served_below_the_total() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(0, 0)),
        Admission::Serve
    );
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(3, 3)),
        Admission::Serve
    );
}

#[test]
fn a_full_peer_may_use_the_reserved_connections_beyond_the_total() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(4, 0)),
        Admission::Serve
    );
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(5, 0)),
        Admission::Serve
    );
}

#[test]
fn a_full_peer_is_busy_once_the_reserved_connections_are_used() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(6, 0)),
        Admission::OverTotal
    );
}

#[test]
fn a_full_peer_has_no_per_uid_limit() {
    assert_eq!(
        LIMITS.admit(&peer(Access::Full), open(3, 3)),
        Admission::Serve
    );
}

#[test]
fn a_read_only_peer_is_served_below_both_limits() {
    assert_eq!(
        LIMITS.admit(&peer(Access::ReadOnly), open(3, 0)),
        Admission::Serve
    );
}

#[test]
fn a_read_only_peer_gets_no_reserved_connection() {
    assert_eq!(
        LIMITS.admit(&peer(Access::ReadOnly), open(4, 0)),
        Admission::OverTotal
    );
}

#[test]
fn a_read_only_peer_is_held_to_its_share_per_uid() {
    assert_eq!(
        LIMITS.admit(&peer(Access::ReadOnly), open(1, 1)),
        Admission::OverPerUid
    );
}

#[test]
fn the_total_is_reported_before_the_share_per_uid() {
    assert_eq!(
        LIMITS.admit(&peer(Access::ReadOnly), open(4, 1)),
        Admission::OverTotal
    );
}

#[test]
fn limits_follow_the_descriptor_limit() {
    let l = ConnectionLimits::for_nofile(1024);
    assert_eq!(
        (l.total, l.per_uid, l.reserved),
        (256, 32, RESERVED_CONNECTIONS)
    );
    assert_eq!(ConnectionLimits::for_nofile(524_288).total, MAX_CONNECTIONS);
    assert_eq!(ConnectionLimits::for_nofile(8).total, 4);
    assert_eq!(ConnectionLimits::for_nofile(8).per_uid, 1);
}
