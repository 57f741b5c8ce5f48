//! What sysfs says about this machine's hardware: temperatures, mains power supplies, and
//! which physical disks lie under a block device. Every function takes the sysfs root, so
//! tests build a tree of their own.

use std::path::Path;

/// Hottest hwmon temperature in °C, or `None` without sensors.
pub fn read_temperature(sys_root: &Path) -> Option<f64> {
    let dir = std::fs::read_dir(sys_root.join("class/hwmon")).ok()?;
    let mut hottest: Option<f64> = None;
    for hw in dir.flatten() {
        let Ok(files) = std::fs::read_dir(hw.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("temp") && name.ends_with("_input") {
                let milli = std::fs::read_to_string(f.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok());
                if let Some(c) = milli
                    .map(|m| m / 1000.0)
                    .filter(|c| (-60.0..=200.0).contains(c))
                {
                    hottest = Some(hottest.map_or(c, |h: f64| h.max(c)));
                }
            }
        }
    }
    hottest
}

/// Whether every mains power supply is online; `None` when none is visible.
pub fn read_power_supply(sys_root: &Path) -> Option<bool> {
    let dir = std::fs::read_dir(sys_root.join("class/power_supply")).ok()?;
    let mut any = false;
    let mut all_ok = true;
    for ps in dir.flatten() {
        let read = |f: &str| std::fs::read_to_string(ps.path().join(f)).ok();
        if read("type").is_some_and(|t| t.trim() == "Mains") {
            if let Some(online) = read("online") {
                any = true;
                all_ok &= online.trim() == "1";
            }
        }
    }
    any.then_some(all_ok)
}

/// How deep [`physical_disks`] follows devices stacked on devices (LVM on md on partitions
/// is three); a loop in a broken sysfs tree stops here.
const MAX_STACK: usize = 8;

/// The whole disks under block device `name`, by sysfs under `sys_root`: a partition's disk,
/// the members of a device-mapper (LVM, dm-crypt) or md RAID device (through `slaves/`,
/// recursively), or the device itself. SMART lives on the disks: smartctl cannot read it
/// through `dm-0` or `md0`, nor through an NVMe partition. A device sysfs does not know is
/// returned as given. A disk reached by several paths (dm-multipath's one member per path)
/// is read once, under the first of its names: the same `wwid` is the same disk.
pub fn physical_disks(sys_root: &Path, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect_disks(sys_root, name, 0, &mut out);
    out.sort();
    out.dedup();
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| match wwid(sys_root, d) {
        Some(id) => seen.insert(id),
        None => true,
    });
    out
}

/// The world-wide identifier sysfs gives a disk (SCSI and SATA under `device/`, NVMe
/// namespaces beside it), if any.
fn wwid(sys_root: &Path, disk: &str) -> Option<String> {
    let dir = sys_root.join("class/block").join(disk);
    ["device/wwid", "wwid"].iter().find_map(|f| {
        let id = std::fs::read_to_string(dir.join(f)).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    })
}

fn collect_disks(sys_root: &Path, name: &str, depth: usize, out: &mut Vec<String>) {
    let dir = sys_root.join("class/block").join(name);
    if depth < MAX_STACK {
        let mut members: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !members.is_empty() {
            members.sort();
            for m in members {
                collect_disks(sys_root, &m, depth + 1, out);
            }
            return;
        }
        // A partition's sysfs directory sits inside its disk's, which may itself be stacked
        // (`md126p1` of a firmware RAID).
        if dir.join("partition").exists() {
            let disk = std::fs::canonicalize(&dir)
                .ok()
                .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()));
            if let Some(disk) = disk {
                collect_disks(sys_root, &disk, depth + 1, out);
                return;
            }
        }
    }
    out.push(name.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sensors_and_their_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_temperature(dir.path()), None);
        assert_eq!(read_power_supply(dir.path()), None);
        let hw = dir.path().join("class/hwmon/hwmon0");
        std::fs::create_dir_all(&hw).unwrap();
        std::fs::write(hw.join("temp1_input"), "45000\n").unwrap();
        std::fs::write(hw.join("temp2_input"), "61500\n").unwrap();
        std::fs::write(hw.join("temp3_input"), "garbage\n").unwrap();
        assert_eq!(read_temperature(dir.path()), Some(61.5));
        let ps = dir.path().join("class/power_supply/PSU1");
        std::fs::create_dir_all(&ps).unwrap();
        std::fs::write(ps.join("type"), "Mains\n").unwrap();
        std::fs::write(ps.join("online"), "1\n").unwrap();
        let bat = dir.path().join("class/power_supply/BAT0");
        std::fs::create_dir_all(&bat).unwrap();
        std::fs::write(bat.join("type"), "Battery\n").unwrap();
        assert_eq!(read_power_supply(dir.path()), Some(true));
        std::fs::write(ps.join("online"), "0\n").unwrap();
        assert_eq!(read_power_supply(dir.path()), Some(false));
    }

    /// A partition resolves to its disk, LVM on md on partitions to the md members' disks,
    /// a partition of an md device to the members' disks, two paths to one disk to one of
    /// them, a plain disk to itself, and a name sysfs does not know stays as given.
    #[test]
    fn data_devices_resolve_to_their_physical_disks() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let devices = root.join("devices/pci0/block");
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        // Two disks with a partition each, as sysfs nests them.
        for (disk, part) in [("sda", "sda1"), ("nvme0n1", "nvme0n1p2")] {
            let d = devices.join(disk);
            std::fs::create_dir_all(d.join(part)).unwrap();
            std::fs::write(d.join(part).join("partition"), "1\n").unwrap();
            symlink(&d, class.join(disk)).unwrap();
            symlink(d.join(part), class.join(part)).unwrap();
        }
        // md0 mirrors both partitions; dm-0 (an LVM volume) sits on md0.
        let virt = root.join("devices/virtual/block");
        for (dev, members) in [
            ("md0", ["sda1", "nvme0n1p2"].as_slice()),
            ("dm-0", &["md0"]),
        ] {
            let d = virt.join(dev);
            std::fs::create_dir_all(d.join("slaves")).unwrap();
            for m in members {
                symlink(class.join(m), d.join("slaves").join(m)).unwrap();
            }
            symlink(&d, class.join(dev)).unwrap();
        }
        // md0p1, a partition of md0 (firmware RAID is partitioned this way).
        std::fs::create_dir_all(virt.join("md0/md0p1")).unwrap();
        std::fs::write(virt.join("md0/md0p1/partition"), "1\n").unwrap();
        symlink(virt.join("md0/md0p1"), class.join("md0p1")).unwrap();
        // dm-3 is one LUN over two paths, sdb and sdc: one disk.
        for path in ["sdb", "sdc"] {
            let d = devices.join(path);
            std::fs::create_dir_all(d.join("device")).unwrap();
            std::fs::write(d.join("device/wwid"), "naa.5000c500a1b2c3d4\n").unwrap();
            symlink(&d, class.join(path)).unwrap();
        }
        let d = virt.join("dm-3");
        std::fs::create_dir_all(d.join("slaves")).unwrap();
        for path in ["sdc", "sdb"] {
            symlink(class.join(path), d.join("slaves").join(path)).unwrap();
        }
        symlink(&d, class.join("dm-3")).unwrap();
        let disks = |name: &str| physical_disks(root, name);
        assert_eq!(disks("sda"), ["sda"]);
        assert_eq!(disks("sda1"), ["sda"]);
        assert_eq!(disks("nvme0n1p2"), ["nvme0n1"]);
        assert_eq!(disks("md0"), ["nvme0n1", "sda"]);
        assert_eq!(disks("dm-0"), ["nvme0n1", "sda"]);
        assert_eq!(disks("md0p1"), ["nvme0n1", "sda"]);
        assert_eq!(disks("dm-3"), ["sdb"]);
        assert_eq!(disks("unknown"), ["unknown"]);
        // A loop in a broken tree ends.
        let a = virt.join("dm-7");
        std::fs::create_dir_all(a.join("slaves")).unwrap();
        symlink(&a, class.join("dm-7")).unwrap();
        symlink(&a, a.join("slaves/dm-7")).unwrap();
        assert_eq!(disks("dm-7"), ["dm-7"]);
    }
}
