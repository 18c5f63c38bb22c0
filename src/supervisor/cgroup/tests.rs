//! The cgroup files against a fake cgroupfs: plain files in a temporary directory, written the
//! way the kernel shows them.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::{CgroupLimits, CpuMax};
use crate::test_support::TempDir;

fn put(dir: &Path, file: &str, text: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(file), text).unwrap();
}

const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn the_v2_mount_is_found_by_its_file_system_type() {
    assert_eq!(
        v2_mount(MOUNTINFO),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let plain = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_eq!(v2_mount(plain), Some(PathBuf::from("/sys/fs/cgroup")));
    let spaced = "29 23 0:26 / /mnt/a\\040b rw - cgroup2 none rw\n";
    assert_eq!(v2_mount(spaced), Some(PathBuf::from("/mnt/a b")));
    assert_eq!(
        v2_mount(&MOUNTINFO.replace("cgroup2 cgroup2", "cgroup x")),
        None
    );
}

#[test]
fn warden_finds_its_own_cgroup_only_where_the_mount_shows_it() {
    let (mount, root) = v2_mount_root(MOUNTINFO).unwrap();
    assert_eq!(
        (mount.as_path(), root.as_str()),
        (Path::new("/sys/fs/cgroup/unified"), "/")
    );
    assert_eq!(
        own_dir(&mount, &root, "/a9box.1/x").unwrap(),
        PathBuf::from("/sys/fs/cgroup/unified/a9box.1/x")
    );
    assert_eq!(own_dir(&mount, &root, "/").unwrap(), mount);
    // A bind mount of a subtree (a container's own cgroup at /sys/fs/cgroup).
    let bound = "29 23 0:26 /docker/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let (mount, root) = v2_mount_root(bound).unwrap();
    assert_eq!(root, "/docker/c1");
    assert_eq!(
        own_dir(&mount, &root, "/docker/c1/app").unwrap(),
        PathBuf::from("/sys/fs/cgroup/app")
    );
    assert!(own_dir(&mount, &root, "/docker/c2").is_err());
    // `unshare --cgroup` without a new mount: the host's mount, seen from the namespace.
    let outside = "41 31 0:38 /.. /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    let (mount, root) = v2_mount_root(outside).unwrap();
    let e = own_dir(&mount, &root, "/").unwrap_err();
    assert!(e.contains("mounted outside it"), "{e}");
}

#[test]
fn a_controller_bound_to_a_v1_hierarchy_is_found() {
    use crate::config::preflight::v1_mount_of;
    assert_eq!(
        v1_mount_of(MOUNTINFO, "memory"),
        Some(PathBuf::from("/sys/fs/cgroup/memory"))
    );
    assert_eq!(v1_mount_of(MOUNTINFO, "pids"), None);
    // The name of a v1 hierarchy is an option too, not a controller of another.
    let named = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
    assert_eq!(v1_mount_of(named, "systemd"), None);
}

#[test]
fn the_own_path_is_the_0_line() {
    let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/warden.service\n";
    assert_eq!(
        own_path(text).as_deref(),
        Some("/system.slice/warden.service")
    );
    assert_eq!(own_path("0::/\n").as_deref(), Some("/"));
    assert_eq!(own_path("4:memory:/x\n"), None);
    assert_eq!(
        dir_of(Path::new("/sys/fs/cgroup"), "/a/b"),
        PathBuf::from("/sys/fs/cgroup/a/b")
    );
    assert_eq!(
        dir_of(Path::new("/sys/fs/cgroup"), "/"),
        PathBuf::from("/sys/fs/cgroup")
    );
}

#[test]
fn populated_reads_cgroup_events_and_a_gone_cgroup_is_empty() {
    let t = TempDir::new("cg-populated");
    let dir = t.join("web@0.1");
    put(&dir, "cgroup.events", "populated 1\nfrozen 0\n");
    assert!(populated(&dir));
    put(&dir, "cgroup.events", "populated 0\nfrozen 0\n");
    assert!(!populated(&dir));
    assert!(!populated(&t.join("gone")));
}

#[test]
fn oom_kills_reads_memory_events_and_is_zero_without_the_controller() {
    let t = TempDir::new("cg-oom");
    let dir = t.join("web@0.1");
    put(
        &dir,
        "memory.events",
        "low 0\nhigh 3\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
    );
    assert_eq!(oom_kills(&dir), 2);
    fs::remove_file(dir.join("memory.events")).unwrap();
    assert_eq!(oom_kills(&dir), 0);
}

fn all_limits() -> CgroupLimits {
    CgroupLimits {
        memory_max: Some(64 << 20),
        memory_high: Some(48 << 20),
        pids_max: Some(32),
        cpu_max: Some(CpuMax {
            quota_us: 50_000,
            period_us: 100_000,
        }),
    }
}

#[test]
fn limits_are_written_where_their_controller_is_enabled_and_named_where_not() {
    let t = TempDir::new("cg-limits");
    let parent = t.join("parent");
    let base = parent.join("warden-77");
    put(&parent, "cgroup.controllers", "cpu memory\n");
    put(
        &base.join("programs"),
        "cgroup.subtree_control",
        "cpu memory\n",
    );
    let h = Hierarchy::adopt(parent.clone(), base.clone());
    assert_eq!(h.controllers, ["cpu", "memory"]);
    let (dir, failed) = h.instance("web@0.1", &all_limits()).unwrap();
    assert_eq!(dir, base.join("programs/web@0.1"));
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("memory.high"), "50331648");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert!(!dir.join("pids.max").exists());
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        // Not enabled above, or (on a machine such as this one) bound to a cgroup v1 hierarchy.
        failed[0].starts_with("pids_max: the pids controller is not enabled for")
            || failed[0].starts_with("pids_max: the pids controller is bound to the cgroup v1"),
        "{failed:?}"
    );
    // Offered by the parent but not enabled below it: a different reason.
    put(&parent, "cgroup.controllers", "cpu memory pids\n");
    let h = Hierarchy::adopt(parent, base);
    let (_, failed) = h.instance("web@0.1", &all_limits()).unwrap();
    assert!(
        failed[0].contains("could not enable the pids controller"),
        "{failed:?}"
    );
    // No limits, nothing to say.
    let (_, failed) = h.instance("web@1.2", &CgroupLimits::default()).unwrap();
    assert!(failed.is_empty());
}

#[test]
fn set_up_makes_the_base_moves_warden_and_enables_what_the_parent_offers() {
    let t = TempDir::new("cg-setup");
    let parent = t.join("parent");
    put(&parent, "cgroup.controllers", "memory pids\n");
    put(&parent, "cgroup.subtree_control", "");
    let base = parent.join("warden-42");
    let (h, cleaned) = Hierarchy::set_up_with(&parent, 42, &fake_mkdir).unwrap();
    assert!(cleaned.is_empty());
    assert_eq!(h.base, base);
    assert_eq!(
        fs::read_to_string(base.join("supervisor/cgroup.procs")).unwrap(),
        "42"
    );
    // Written top-down, as the kernel requires (each write of a plain file replaces it).
    assert_eq!(
        fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
        "+pids"
    );
    assert_eq!(
        fs::read_to_string(base.join("programs/cgroup.subtree_control")).unwrap(),
        "+pids"
    );
    // Without cgroup.kill (before Linux 5.14), no cgroup mode, and nothing is left behind.
    let other = t.join("old");
    put(&other, "cgroup.controllers", "");
    let err = Hierarchy::set_up_with(&other, 43, &|d| fs::create_dir(d)).unwrap_err();
    assert!(err.contains("no cgroup.kill"), "{err}");
    assert!(!other.join("warden-43").exists());
}

/// `mkdir` as the kernel does it in a cgroup file system: the directory with its interface
/// files (`cgroup.kill`, `cgroup.procs`, `cgroup.events`).
fn fake_mkdir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir(dir)?;
    for (file, text) in [
        ("cgroup.kill", ""),
        ("cgroup.procs", ""),
        ("cgroup.events", "populated 0\n"),
    ] {
        fs::write(dir.join(file), text)?;
    }
    Ok(())
}

/// Sets the modification time of directory `dir` `secs` seconds back.
fn age(dir: &Path, secs: u64) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    fs::File::open(dir).unwrap().set_modified(then).unwrap();
}

#[test]
fn a_base_left_by_a_dead_warden_is_killed_and_removed_a_live_one_is_not() {
    let t = TempDir::new("cg-stale");
    let parent = t.join("parent");
    // Judged by the supervisor leaf, whatever the pid says (pid 1 lives here; another PID
    // namespace's warden may be pid 4194305 there).
    let dead = parent.join("warden-1");
    let live = parent.join("warden-4194305");
    let twin = parent.join("warden-4194305-2");
    let young = parent.join("warden-5");
    put(&dead.join("programs"), "cgroup.events", "populated 1\n");
    put(&dead.join("programs"), "cgroup.kill", "");
    put(&dead.join("supervisor"), "cgroup.events", "populated 0\n");
    for l in [&live, &twin] {
        put(&l.join("programs"), "cgroup.events", "populated 1\n");
        put(&l.join("supervisor"), "cgroup.events", "populated 1\n");
    }
    // Being set up: no process in its leaf yet.
    put(&young.join("programs"), "cgroup.kill", "");
    // What a warden that ran as `[daemon] user` leaves at its stop: its empty leaf alone.
    let left = parent.join("warden-9");
    put(&left.join("supervisor"), "cgroup.events", "populated 0\n");
    age(&left, 5);
    // Not warden's: no `programs`, or not its name.
    fs::create_dir_all(parent.join("warden-77/other")).unwrap();
    fs::create_dir_all(parent.join("warden-web/programs")).unwrap();
    fs::create_dir_all(parent.join("unrelated")).unwrap();
    for d in [&dead, &live, &twin] {
        age(d, 5);
    }
    age(&parent.join("warden-77"), 5);
    age(&parent.join("warden-web"), 5);
    let mut lines = clean_stale(&parent);
    lines.sort();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("/warden-1 "), "{lines:?}");
    assert!(lines[1].contains("/warden-9:"), "{lines:?}");
    // The kill was asked; a fake tree's files keep the directories from being removed.
    assert_eq!(
        fs::read_to_string(dead.join("programs/cgroup.kill")).unwrap(),
        "1"
    );
    assert_eq!(
        fs::read_to_string(young.join("programs/cgroup.kill")).unwrap(),
        ""
    );
    for d in ["warden-77", "warden-web", "unrelated"] {
        assert!(parent.join(d).exists(), "{d}");
    }
}

#[test]
fn a_base_name_in_use_by_a_warden_of_another_pid_namespace_is_not_shared() {
    let t = TempDir::new("cg-twin");
    let parent = t.join("parent");
    put(&parent, "cgroup.controllers", "");
    // Another PID namespace's warden, pid 1 there, lives in warden-1.
    let other = parent.join("warden-1");
    put(&other.join("supervisor"), "cgroup.events", "populated 1\n");
    put(&other.join("programs"), "cgroup.kill", "");
    let (h, _) = Hierarchy::set_up_with(&parent, 1, &fake_mkdir).unwrap();
    assert_eq!(h.base, parent.join("warden-1-2"));
    assert_eq!(
        fs::read_to_string(parent.join("warden-1-2/supervisor/cgroup.procs")).unwrap(),
        "1"
    );
}

#[test]
fn instance_names_cannot_collide() {
    assert_eq!(instance_name("web", 0, 3), "web@0.3");
    assert_ne!(instance_name("a.1", 0, 2), instance_name("a", 1, 2));
}

/// The groups' side against the fake tree: a group whose cgroup empties is reported empty, its
/// cgroup removed, and the OOM killer's strike (an `oom_kill` above the spawn's) remembered for
/// its instance — the last exit reason becomes `oom`.
#[test]
fn an_emptied_cgroup_ends_its_group_and_tells_an_oom_kill() {
    use crate::supervisor::groups::Groups;
    use crate::supervisor::table::{ProgramId, SlotId};
    let t = TempDir::new("cg-groups");
    let poll = mio::Poll::new().unwrap();
    let mut groups = Groups::new(mio::Token(3));
    let (a, b) = (t.join("w@0.1"), t.join("w@1.2"));
    put(&a, "cgroup.events", "populated 1\n");
    put(&a, "memory.events", "oom_kill 0\n");
    put(&b, "cgroup.events", "populated 1\n");
    let (oa, ob) = ((ProgramId(0), SlotId(1)), (ProgramId(0), SlotId(2)));
    // Pids no process group has: only the cgroup can say whether they are empty.
    groups.add_in(poll.registry(), 4_000_001, oa, Some((a.clone(), 0)));
    groups.add_in(poll.registry(), 4_000_002, ob, Some((b.clone(), 0)));
    groups.leader_reaped(4_000_001);
    groups.leader_reaped(4_000_002);
    assert!(
        groups.sweep(poll.registry()).is_empty(),
        "both still populated"
    );
    assert!(groups.has_members(poll.registry(), 4_000_001));
    put(&a, "memory.events", "oom_kill 1\n");
    put(&a, "cgroup.events", "populated 0\n");
    assert_eq!(groups.sweep(poll.registry()), [(4_000_001, oa)]);
    assert!(groups.take_oom(oa));
    assert!(!groups.take_oom(oa), "told once");
    put(&b, "cgroup.events", "populated 0\n");
    assert!(!groups.has_members(poll.registry(), 4_000_002));
    assert!(!groups.take_oom(ob), "no oom_kill: no oom");
    assert!(!groups.contains(4_000_001) && !groups.contains(4_000_002));
}
