//! `wg-appliance tune` on the lab gateway's WAN veth (XDP attached, the
//! tunnel up): `--apply` changes what it shows, printing before → after,
//! saves the originals in a 0600 file, refuses a second `--apply`; the
//! tunnel still carries traffic; `--revert` puts every value back as it
//! was and removes the file. Once leaving the queue counts alone (RPS and
//! XPS masks), once with them (ethtool channels, then masks on the new
//! queues).
//!
//! net.core.rmem_max/wmem_max are global: in a test namespace they are
//! read-only, and tune says so instead of failing (they are shown, never
//! changed here).

mod ops_lab;

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, time::Duration};

use ops_lab::{Lab, LabOpts};
use wg_appliance_tests::{netns_unavailable, skip, Netns};

/// Every value tune may touch on `dev`, read inside `ns`.
fn snapshot(ns: &Netns, dev: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let sh = |cmd: &str| -> String {
        String::from_utf8_lossy(&ns.exec("sh", &["-c", cmd]).expect("sh").stdout).into_owned()
    };
    for line in sh(&format!(
        "for f in /sys/class/net/{dev}/queues/*/rps_cpus /sys/class/net/{dev}/queues/*/xps_cpus; do echo \"$f=$(cat $f)\"; done"
    ))
    .lines()
    {
        if let Some((k, v)) = line.split_once('=') {
            m.insert(k.to_owned(), v.to_owned());
        }
    }
    m.insert(
        "channels".into(),
        sh(&format!("ethtool -l {dev} | sed -n '/Current/,$p'")),
    );
    for s in ["net.core.rmem_max", "net.core.wmem_max"] {
        m.insert(s.into(), sh(&format!("sysctl -n {s}")));
    }
    m
}

fn state_file(lab: &Lab) -> std::path::PathBuf {
    let ino = std::fs::metadata(format!("/var/run/netns/{}", lab.gw.name()))
        .expect("netns")
        .ino();
    wg_appliance::persist::run_dir()
        .join("tune")
        .join(format!("{ino}.json"))
}

#[test]
fn tune_apply_then_revert_restores_every_value() {
    if let Some(why) = netns_unavailable() {
        skip("tune_apply_then_revert_restores_every_value", &why);
        return;
    }
    let lab = Lab::new(LabOpts {
        forwarding: true,
        ..LabOpts::default()
    })
    .expect("lab");
    lab.warm_up(Duration::from_secs(20)).expect("tunnel up");
    let dev = lab.wan_link.a.clone();
    let ifname = lab.ifname.clone();
    let original = snapshot(&lab.gw, &dev);
    let state = state_file(&lab);
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Cleanup(state.clone());

    // Show: the WAN from the daemon, and what --apply would do.
    let f = lab.run(&["tune", &ifname]).expect("tune");
    assert!(f.status.success(), "{}", f.stderr);
    assert!(
        f.stdout.contains(&format!("tune: WAN {dev}")),
        "{}",
        f.stdout
    );
    assert!(
        f.stdout.contains("read-only in this network namespace"),
        "{}",
        f.stdout
    );
    assert!(
        f.stdout.contains(&format!("{dev} XDP mode: native")),
        "{}",
        f.stdout
    );
    assert!(!state.exists(), "show changes nothing");

    for (round, extra) in [("masks", Some("--keep-queues")), ("queues", None)] {
        let mut args = vec!["tune", ifname.as_str(), "--apply"];
        args.extend(extra);
        let f = lab.run(&args).expect("tune --apply");
        assert!(f.status.success(), "{round}: {}", f.stderr);
        eprintln!("tune --apply ({round}):\n{}", f.stdout);
        let changed = snapshot(&lab.gw, &dev);
        assert_ne!(changed, original, "{round}: --apply changed nothing");
        match round {
            "masks" => {
                // One receive queue for two CPUs: RPS spreads over both;
                // the one transmit queue takes both CPUs.
                assert!(
                    f.stdout.contains(&format!("{dev} rx-0 RPS CPUs: 0 → 3")),
                    "{}",
                    f.stdout
                );
                assert!(
                    f.stdout.contains(&format!("{dev} tx-0 XPS CPUs: 0 → 3")),
                    "{}",
                    f.stdout
                );
                let rps = changed
                    .get(&format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus"))
                    .expect("rps");
                assert_eq!(rps.trim_start_matches('0'), "3", "{changed:?}");
            }
            _ => {
                assert!(
                    f.stdout.contains(&format!("{dev} rx queues: 1 → 2")),
                    "{}",
                    f.stdout
                );
                assert!(
                    changed["channels"].contains("RX:\t\t2"),
                    "{}",
                    changed["channels"]
                );
                assert!(
                    changed.contains_key(&format!("/sys/class/net/{dev}/queues/tx-1/xps_cpus")),
                    "a second transmit queue: {changed:?}"
                );
            }
        }
        let mode = std::fs::metadata(&state).expect("state file").mode() & 0o777;
        assert_eq!(mode, 0o600, "the saved values are root's only");
        // A second --apply would save the changed values as the originals.
        let again = lab.run(&args).expect("tune --apply again");
        assert!(
            !again.status.success() && again.stderr.contains("--revert"),
            "{}",
            again.stderr
        );
        // The tunnel carries traffic with the new settings.
        lab.warm_up(Duration::from_secs(10))
            .expect("tunnel after --apply");

        let f = lab.run(&["tune", "--revert"]).expect("tune --revert");
        assert!(f.status.success(), "{round}: {}", f.stderr);
        assert!(
            f.stdout.contains("every saved value restored"),
            "{}",
            f.stdout
        );
        assert_eq!(
            snapshot(&lab.gw, &dev),
            original,
            "{round}: --revert left a value changed"
        );
        assert!(!state.exists(), "the saved values are gone after --revert");
        lab.warm_up(Duration::from_secs(10))
            .expect("tunnel after --revert");
    }
    let f = lab.run(&["tune", "--revert"]).expect("tune --revert");
    assert!(
        f.status.success() && f.stdout.contains("nothing to revert"),
        "{}",
        f.stdout
    );
    let f = lab.run(&["tune", "--wan", "nosuchdev0"]).expect("tune");
    assert!(
        !f.status.success() && f.stderr.contains("Fix:"),
        "{}",
        f.stderr
    );
}
