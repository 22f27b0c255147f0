//! How many GPUs the machine has, from sources other than NVML: PCI sysfs
//! (which still lists a GPU the driver failed to initialise) and the
//! `/dev/nvidiaN` device nodes.

use std::path::Path;

const NVIDIA_VENDOR: &str = "0x10de";
/// PCI class prefixes of a display controller (VGA) and a 3D controller
/// (data-center GPUs, e.g. H200: 0x030200).
const GPU_CLASSES: [&str; 2] = ["0x0300", "0x0302"];

/// NVIDIA GPUs under `<sys>/bus/pci/devices`, or `None` when unreadable.
pub fn sysfs_gpus(sys: &Path) -> Option<u32> {
    let entries = std::fs::read_dir(sys.join("bus/pci/devices")).ok()?;
    let mut n = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let read =
            |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_ascii_lowercase());
        if read("vendor").is_ok_and(|v| v == NVIDIA_VENDOR)
            && read("class").is_ok_and(|c| GPU_CLASSES.iter().any(|p| c.starts_with(p)))
        {
            n += 1;
        }
    }
    Some(n)
}

/// `<dev>/nvidiaN` nodes (not nvidiactl, nvidia-uvm, …), or `None` when unreadable.
pub fn dev_nodes(dev: &Path) -> Option<u32> {
    let entries = std::fs::read_dir(dev).ok()?;
    let n = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("nvidia"))
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(root: &Path, addr: &str, vendor: &str, class: &str) {
        let d = root.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).expect("write");
        std::fs::write(d.join("class"), format!("{class}\n")).expect("write");
    }

    #[test]
    fn counts_nvidia_display_and_3d_controllers_only() {
        let sys = tempfile::tempdir().expect("tempdir");
        device(sys.path(), "0000:00:06.0", "0x10de", "0x030200"); // H200 (fixture host)
        device(sys.path(), "0000:3b:00.0", "0x10de", "0x030000"); // a VGA-class GPU
        device(sys.path(), "0000:3c:00.0", "0x10de", "0x068000"); // NVSwitch bridge: not a GPU
        device(sys.path(), "0000:00:1f.0", "0x8086", "0x030000"); // someone else's GPU
        assert_eq!(sysfs_gpus(sys.path()), Some(2));
        assert_eq!(sysfs_gpus(&sys.path().join("nope")), None);
    }

    #[test]
    fn counts_numbered_device_nodes_only() {
        let dev = tempfile::tempdir().expect("tempdir");
        for n in [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
            "nvme0",
        ] {
            std::fs::write(dev.path().join(n), "").expect("write");
        }
        assert_eq!(dev_nodes(dev.path()), Some(2));
    }
}
