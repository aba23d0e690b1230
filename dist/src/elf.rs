//! The few facts about an ELF file that copying it into an image needs: its
//! program interpreter (`PT_INTERP`), the libraries it names (`DT_NEEDED`)
//! and its library search path (`DT_RUNPATH`, or the older `DT_RPATH`).
//!
//! A small reader of our own rather than a crate: it reads a handful of
//! fields through the program headers (what the dynamic loader itself uses,
//! so it also works on files without section headers), every read is bounds
//! checked, and it adds no dependency to the static binary. Both classes
//! (32/64-bit) and byte orders are read; [`ElfInfo::machine`] and
//! [`ElfInfo::class64`] let callers skip libraries of another architecture,
//! as the loader does.

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file does not start with `\x7fELF`.
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    /// An ELF class or byte order this reader does not know.
    #[error("unsupported ELF {what}")]
    Unsupported {
        /// What, e.g. `class 3`.
        what: String,
    },
    /// A header, program header or dynamic entry points outside the file
    /// or is inconsistent.
    #[error("malformed ELF file: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

impl ElfError {
    /// True for every variant (`selfnode` exits 2): the bytes of the file
    /// are what they are, and reading them again gives the same answer.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ElfError::NotElf | ElfError::Unsupported { .. } | ElfError::Malformed { .. } => true,
        }
    }
}

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// 64-bit (ELFCLASS64) or 32-bit.
    pub class64: bool,
    /// `e_machine` (62 for x86-64, 183 for aarch64).
    pub machine: u16,
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`; `None` for shared
    /// libraries and static executables.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries in file order, e.g. `libc.so.6`.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or `DT_RPATH` when there is no RUNPATH), split at `:`,
    /// unexpanded (`$ORIGIN` stays as is).
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Bounds-checked reads in the file's class and byte order.
struct Reader<'a> {
    data: &'a [u8],
    class64: bool,
    little: bool,
}

fn malformed(reason: impl Into<String>) -> ElfError {
    ElfError::Malformed {
        reason: reason.into(),
    }
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, offset: u64, what: &str) -> Result<[u8; N], ElfError> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.data.get(start..start.checked_add(N)?))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| malformed(format!("{what} at offset {offset} is past the end")))
    }

    fn u16(&self, offset: u64, what: &str) -> Result<u16, ElfError> {
        let b = self.bytes::<2>(offset, what)?;
        Ok(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, offset: u64, what: &str) -> Result<u32, ElfError> {
        let b = self.bytes::<4>(offset, what)?;
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn u64(&self, offset: u64, what: &str) -> Result<u64, ElfError> {
        let b = self.bytes::<8>(offset, what)?;
        Ok(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }

    /// An address-sized word (`Elf64_Addr`/`Off`/`Xword` or their 32-bit forms).
    fn word(&self, offset: u64, what: &str) -> Result<u64, ElfError> {
        if self.class64 {
            self.u64(offset, what)
        } else {
            self.u32(offset, what).map(u64::from)
        }
    }

    /// The NUL-terminated string at `offset`, not reaching `end`.
    fn c_str(&self, offset: u64, end: u64, what: &str) -> Result<String, ElfError> {
        let past = || malformed(format!("{what} at offset {offset} is past the end"));
        let start = usize::try_from(offset).map_err(|_| past())?;
        let end = usize::try_from(end)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let slice = self.data.get(start..end).ok_or_else(past)?;
        let len = slice
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed(format!("{what} at offset {offset} is not terminated")))?;
        String::from_utf8(slice[..len].to_vec())
            .map_err(|_| malformed(format!("{what} at offset {offset} is not UTF-8")))
    }
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads the interpreter, needed libraries and run path of the ELF file
/// `data`.
pub fn parse(data: &[u8]) -> Result<ElfInfo, ElfError> {
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if data.len() < 6 {
        return Err(malformed("the header is truncated"));
    }
    let class64 = match data[4] {
        1 => false,
        2 => true,
        other => {
            return Err(ElfError::Unsupported {
                what: format!("class {other}"),
            })
        }
    };
    let little = match data[5] {
        1 => true,
        2 => false,
        other => {
            return Err(ElfError::Unsupported {
                what: format!("byte order {other}"),
            })
        }
    };
    let r = Reader {
        data,
        class64,
        little,
    };
    let machine = r.u16(18, "e_machine")?;
    let (phoff, phentsize, phnum) = if class64 {
        (
            r.u64(32, "e_phoff")?,
            r.u16(54, "e_phentsize")?,
            r.u16(56, "e_phnum")?,
        )
    } else {
        (
            u64::from(r.u32(28, "e_phoff")?),
            r.u16(42, "e_phentsize")?,
            r.u16(44, "e_phnum")?,
        )
    };
    let min_entsize = if class64 { 56 } else { 32 };
    if phnum > 0 && phentsize < min_entsize {
        return Err(malformed(format!(
            "program header entries of {phentsize} bytes"
        )));
    }
    let mut segments = Vec::with_capacity(usize::from(phnum));
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or_else(|| malformed("program header offset overflows"))?;
        let what = "program header";
        segments.push(if class64 {
            Segment {
                kind: r.u32(at, what)?,
                offset: r.u64(at + 8, what)?,
                vaddr: r.u64(at + 16, what)?,
                filesz: r.u64(at + 32, what)?,
            }
        } else {
            Segment {
                kind: r.u32(at, what)?,
                offset: u64::from(r.u32(at + 4, what)?),
                vaddr: u64::from(r.u32(at + 8, what)?),
                filesz: u64::from(r.u32(at + 16, what)?),
            }
        });
    }

    let mut info = ElfInfo {
        class64,
        machine,
        ..ElfInfo::default()
    };
    if let Some(interp) = segments.iter().find(|s| s.kind == PT_INTERP) {
        let end = interp.offset.saturating_add(interp.filesz);
        info.interpreter = Some(r.c_str(interp.offset, end, "PT_INTERP")?);
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(info);
    };

    // The dynamic table: tag/value pairs up to DT_NULL. Strings are offsets
    // into DT_STRTAB, which is a virtual address: map it to the file through
    // the PT_LOAD segment that contains it.
    let entsize: u64 = if class64 { 16 } else { 8 };
    let mut needed_offsets = Vec::new();
    let (mut strtab, mut strsz, mut rpath, mut runpath) = (None, None, None, None);
    let mut at = dynamic.offset;
    let end = dynamic.offset.saturating_add(dynamic.filesz);
    while at.saturating_add(entsize) <= end {
        let tag = r.word(at, "dynamic entry")?;
        let value = r.word(at + entsize / 2, "dynamic entry")?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed_offsets.push(value),
            DT_STRTAB => strtab = Some(value),
            DT_STRSZ => strsz = Some(value),
            DT_RPATH => rpath = Some(value),
            DT_RUNPATH => runpath = Some(value),
            _ => {}
        }
        at += entsize;
    }
    if needed_offsets.is_empty() && rpath.is_none() && runpath.is_none() {
        return Ok(info);
    }
    let strtab = strtab.ok_or_else(|| malformed("dynamic section without DT_STRTAB"))?;
    let load = segments
        .iter()
        .find(|s| s.kind == PT_LOAD && s.vaddr <= strtab && strtab - s.vaddr < s.filesz)
        .ok_or_else(|| {
            malformed(format!(
                "DT_STRTAB address {strtab:#x} is in no loaded segment"
            ))
        })?;
    let str_start = load.offset + (strtab - load.vaddr);
    let load_end = load.offset.saturating_add(load.filesz);
    let str_end = strsz.map_or(load_end, |size| {
        str_start.saturating_add(size).min(load_end)
    });
    let string = |offset: u64, what: &str| {
        let at = str_start
            .checked_add(offset)
            .filter(|at| *at < str_end)
            .ok_or_else(|| malformed(format!("{what} string offset {offset} is out of range")))?;
        r.c_str(at, str_end, what)
    };
    for offset in needed_offsets {
        info.needed.push(string(offset, "DT_NEEDED")?);
    }
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    if let Some((offset, what)) = runpath
        .map(|o| (o, "DT_RUNPATH"))
        .or(rpath.map(|o| (o, "DT_RPATH")))
    {
        info.runpath = string(offset, what)?
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(str::to_string)
            .collect();
    }
    Ok(info)
}

/// Builds small synthetic ELF files for tests (of this module and of the
/// host file collector).
#[cfg(test)]
pub(crate) mod testing {
    /// A minimal ELF64 little-endian x86-64 file: one PT_LOAD covering the
    /// whole file, an optional PT_INTERP, and a PT_DYNAMIC with the given
    /// DT_NEEDED entries and DT_RUNPATH.
    pub fn elf64(interpreter: Option<&str>, needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let phnum = if interpreter.is_some() { 3 } else { 2 };
        let vaddr_base: u64 = 0x40_0000;

        // Layout: ehdr, phdrs, interp string, strtab, dynamic table.
        let interp_off = EHDR + PHDR * phnum;
        let interp_bytes: Vec<u8> = interpreter
            .map(|i| [i.as_bytes(), &[0]].concat())
            .unwrap_or_default();
        let strtab_off = interp_off + interp_bytes.len();
        let mut strtab = vec![0u8];
        let mut needed_offsets = Vec::new();
        for name in needed {
            needed_offsets.push(strtab.len() as u64);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let runpath_offset = runpath.map(|rp| {
            let at = strtab.len() as u64;
            strtab.extend_from_slice(rp.as_bytes());
            strtab.push(0);
            at
        });
        let dyn_off = (strtab_off + strtab.len()).next_multiple_of(8);
        let mut dynamic: Vec<(u64, u64)> = needed_offsets.iter().map(|o| (1, *o)).collect();
        if let Some(o) = runpath_offset {
            dynamic.push((29, o));
        }
        dynamic.push((5, vaddr_base + strtab_off as u64));
        dynamic.push((10, strtab.len() as u64));
        dynamic.push((0, 0));
        let total = dyn_off + dynamic.len() * 16;

        let mut out = vec![0u8; total];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little endian
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
        out[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
        out[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut phdrs: Vec<(u32, u64, u64)> = vec![(1, 0, total as u64)];
        if interpreter.is_some() {
            phdrs.push((3, interp_off as u64, interp_bytes.len() as u64));
        }
        phdrs.push((2, dyn_off as u64, (dynamic.len() * 16) as u64));
        for (i, (kind, offset, size)) in phdrs.into_iter().enumerate() {
            let at = EHDR + i * PHDR;
            out[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            out[at + 16..at + 24].copy_from_slice(&(vaddr_base + offset).to_le_bytes());
            out[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        }
        out[interp_off..interp_off + interp_bytes.len()].copy_from_slice(&interp_bytes);
        out[strtab_off..strtab_off + strtab.len()].copy_from_slice(&strtab);
        for (i, (tag, value)) in dynamic.iter().enumerate() {
            let at = dyn_off + i * 16;
            out[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::elf64;
    use super::*;

    /// The host's iptables, installed by scripts/install-deps.sh.
    fn host_file(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| {
            panic!("cannot read {path} ({e}): install it with `apt-get install iptables conntrack`")
        })
    }

    #[test]
    fn reads_the_hosts_xtables_legacy_multi() {
        let info = parse(&host_file("/usr/sbin/xtables-legacy-multi")).unwrap();
        assert!(info.class64);
        assert_eq!(info.machine, 62, "x86-64");
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(
            info.needed,
            [
                "libxtables.so.12",
                "libip4tc.so.2",
                "libip6tc.so.2",
                "libc.so.6"
            ]
        );
        assert!(info.runpath.is_empty());

        // A shared library: needed libraries, no interpreter.
        let lib = parse(&host_file(
            "/usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so",
        ))
        .unwrap();
        assert_eq!(lib.interpreter, None);
        assert_eq!(lib.needed, ["libxtables.so.12", "libc.so.6"]);
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("iptables-wrapper");
        std::fs::write(&script, "#!/bin/sh\nexec iptables-nft \"$@\"\n").unwrap();
        let err = parse(&std::fs::read(&script).unwrap()).unwrap_err();
        assert!(matches!(err, ElfError::NotElf), "{err:?}");
        assert_eq!(err.to_string(), "not an ELF file (no \\x7fELF magic)");
        assert!(matches!(parse(b""), Err(ElfError::NotElf)));
    }

    #[test]
    fn synthetic_files_round_trip() {
        let data = elf64(
            Some("/lib/ld-musl-x86_64.so.1"),
            &["libfoo.so.1", "libbar.so"],
            Some("$ORIGIN/../lib::/opt/lib"),
        );
        let info = parse(&data).unwrap();
        assert_eq!(
            info,
            ElfInfo {
                class64: true,
                machine: 62,
                interpreter: Some("/lib/ld-musl-x86_64.so.1".into()),
                needed: vec!["libfoo.so.1".into(), "libbar.so".into()],
                runpath: vec!["$ORIGIN/../lib".into(), "/opt/lib".into()],
            }
        );
        let plain = parse(&elf64(None, &[], None)).unwrap();
        assert_eq!(plain.interpreter, None);
        assert!(plain.needed.is_empty());
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let good = elf64(Some("/lib64/ld.so"), &["libc.so.6"], None);
        // Every truncation and every single-byte corruption of the headers
        // and tables either parses or fails cleanly.
        for len in 0..good.len() {
            let _ = parse(&good[..len]);
        }
        for i in 0..good.len() {
            for value in [0x00, 0xff, 0x7f] {
                let mut bad = good.clone();
                bad[i] = value;
                let _ = parse(&bad);
            }
        }
        let truncated = parse(&good[..100]).unwrap_err();
        assert!(
            truncated.to_string().starts_with("malformed ELF file: "),
            "{truncated}"
        );
        let mut wrong_class = good.clone();
        wrong_class[4] = 9;
        assert_eq!(
            parse(&wrong_class).unwrap_err().to_string(),
            "unsupported ELF class 9"
        );
    }
}
