//! What NVRM lines say: the PCI address form the kernel log writes, the
//! lines we act on (XIDs, every phrasing of "fallen off the bus", the lines
//! that name a GPU, NVSwitch SXids), a record's lines, and the assembler
//! that gives an address-less report the GPU named just before it.

use std::fmt;

/// An address an NVRM line names holds for a report without one within
/// this many lines after it.
pub(super) const NAMED_FOR_LINES: u8 = 3;

/// A PCI address without the function: the kernel log usually omits it,
/// NVML writes an 8-digit domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// `00000000:61:00.0`, `0000:61:00`, `0000:61:00.0` or `61:00.0`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.split_once('.').map_or(s, |(a, _)| a);
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (u32::from_str_radix(d, 16).ok()?, *b, *v),
            [b, v] => (0, *b, *v),
            _ => return None,
        };
        Some(Self {
            domain,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
        })
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// What an NVRM line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelLine {
    /// `NVRM: Xid (PCI:0000:61:00): 79, pid=…, name=…, <text>`
    Xid {
        pci: PciAddr,
        xid: u32,
        detail: String,
    },
    /// Any phrasing of "fallen off the bus" outside an XID line; `pci`
    /// when the line itself names the GPU.
    FellOffBus { pci: Option<PciAddr> },
    /// `NVRM: The NVIDIA GPU 0000:b3:00.0`: the first line of the driver's
    /// probe report, whose last line says "fallen off the bus".
    Names { pci: PciAddr },
    /// `NVRM: GPU at PCI:0000:61:00: GPU-<uuid>`: the driver names the GPU
    /// once per driver load, just before its first XID (kernel_rc.c,
    /// `_krcLogUuidOnce`). It only names the GPU for the lines after it: it
    /// is no evidence of a reset.
    GpuUuid { pci: PciAddr },
    /// `nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 46 <text>`
    SXid {
        pci: PciAddr,
        sxid: u32,
        fatal: bool,
        detail: String,
    },
}

/// Recognises the NVIDIA driver lines we act on; everything else is `None`.
pub fn parse_line(text: &str) -> Option<KernelLine> {
    if let Some(i) = text.find("SXid (PCI:")
        && text[..i].contains("nvswitch")
    {
        let rest = &text[i + "SXid (PCI:".len()..];
        let (addr, rest) = rest.split_once("):")?;
        let mut parts = rest.splitn(3, ',');
        let sxid = parts.next()?.trim().parse().ok()?;
        let severity = parts.next()?.trim();
        return Some(KernelLine::SXid {
            pci: PciAddr::parse(addr)?,
            sxid,
            fatal: severity.eq_ignore_ascii_case("fatal"),
            detail: parts.next().unwrap_or_default().trim().to_owned(),
        });
    }
    let nvrm = text.find("NVRM: ").map(|i| &text[i + 6..])?;
    if let Some(rest) = nvrm.strip_prefix("Xid (PCI:") {
        let (addr, rest) = rest.split_once("):")?;
        // On a MIG GPU the instance follows: `PCI:0000:3b:00 GPU-I:01 GPU-CI:00`.
        let addr = addr.split_whitespace().next().unwrap_or_default();
        let rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let xid = rest[..digits].parse().ok()?;
        let detail = rest[digits..]
            .trim_start_matches([',', ' '])
            .trim()
            .to_owned();
        return Some(KernelLine::Xid {
            pci: PciAddr::parse(addr)?,
            xid,
            detail,
        });
    }
    if let Some(rest) = nvrm.strip_prefix("GPU at PCI:")
        && let Some((addr, uuid)) = rest.split_once(": ")
        && uuid.trim_start().starts_with("GPU-")
    {
        return Some(KernelLine::GpuUuid {
            pci: PciAddr::parse(addr)?,
        });
    }
    if nvrm.contains("fallen off the bus") {
        return Some(KernelLine::FellOffBus {
            pci: first_address(nvrm),
        });
    }
    if let Some(rest) = nvrm.strip_prefix("The NVIDIA GPU ") {
        return Some(KernelLine::Names {
            pci: first_address(rest)?,
        });
    }
    None
}

/// The first word shaped like a PCI address with a domain
/// (`0000:3b:00.0`, `PCI:0000:3b:00:`), as NVRM lines write them.
fn first_address(text: &str) -> Option<PciAddr> {
    text.split_whitespace().find_map(|word| {
        let word = word.trim_start_matches('(').trim_start_matches("PCI:");
        let word = word.trim_end_matches([':', '.', ',', ')']);
        (word.matches(':').count() == 2)
            .then(|| PciAddr::parse(word))
            .flatten()
    })
}

/// The lines of one record: inside `/dev/kmsg` the kernel escapes the
/// newlines of a multi-line message (the driver's probe report) as `\x0a`.
pub fn record_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split("\\x0a").flat_map(|l| l.split('\n'))
}

/// Joins what the driver says over several lines: a fallen-off-the-bus line
/// without an address takes the GPU an NVRM line named just before.
#[derive(Debug, Default)]
pub struct Reports {
    /// The GPU the last NVRM lines named, and for how many more lines.
    named: Option<(PciAddr, u8)>,
}

impl Reports {
    /// What one line says, with the address filled in where it can be.
    pub fn line(&mut self, text: &str) -> Option<KernelLine> {
        let line = parse_line(text);
        let named = self.named.take().filter(|(_, left)| *left > 0);
        let remember = |pci| Some((pci, NAMED_FOR_LINES));
        match &line {
            // Lines that introduce a GPU's report, or say it fell off: an
            // application XID names its GPU for nothing after it.
            Some(KernelLine::Names { pci })
            | Some(KernelLine::GpuUuid { pci })
            | Some(KernelLine::Xid { pci, xid: 79, .. })
            | Some(KernelLine::FellOffBus { pci: Some(pci) }) => {
                self.named = remember(*pci);
            }
            Some(KernelLine::Xid { .. }) => self.named = None,
            Some(KernelLine::FellOffBus { pci: None }) => {
                return Some(KernelLine::FellOffBus {
                    pci: named.map(|(pci, _)| pci),
                });
            }
            Some(KernelLine::SXid { .. }) | None => {
                self.named = named.map(|(pci, left)| (pci, left - 1));
            }
        }
        line
    }
}
