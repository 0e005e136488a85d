//! Decodes an OpenZFS `receive_resume_token` into what the partial receive
//! holds. The kernel builds it in `get_receive_resume_token_impl`
//! (module/zfs/dsl_dataset.c) as
//! `1-<fletcher4 word 0, hex>-<packed size, hex>-<hex of zlib(packed nvlist)>`,
//! and libzfs reads it back in `zfs_send_resume_token_to_nvlist`. The nvlist
//! is packed with `fnvlist_pack`, which is `NV_ENCODE_NATIVE` (not XDR): the
//! `nvpair_t` structs as laid out in memory, in the byte order the header
//! names (module/nvpair/nvpair.c). Every length is checked before use, so
//! hostile input gets an error, never a panic or a large allocation.

use std::io::Read;

use zdr_common::wire::PartialReceive;

/// The only token version OpenZFS writes (`ZFS_SEND_RESUME_TOKEN_VERSION`).
const VERSION: u32 = 1;
/// A real packed nvlist is a few hundred bytes; redaction lists make it
/// longer, never near this.
const MAX_PACKED: u64 = 1 << 20;
/// Nested nvlists never appear in a token; skipping a few levels is enough.
const MAX_DEPTH: u32 = 8;
/// `sizeof (nvpair_t)`: size, name size, reserved, element count, type.
const PAIR_HEADER: usize = 16;

const NV_ENCODE_NATIVE: u8 = 0;
const NV_ENCODE_XDR: u8 = 1;
const DATA_TYPE_BOOLEAN: i32 = 1;
const DATA_TYPE_UINT64: i32 = 8;
const DATA_TYPE_STRING: i32 = 9;
const DATA_TYPE_NVLIST: i32 = 19;
const DATA_TYPE_NVLIST_ARRAY: i32 = 20;

/// A saved partial receive, as its resume token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// GUID of the incremental source; `None` for a full stream.
    pub fromguid: Option<u64>,
    /// Where the interrupted stream stopped: object and offset in it.
    pub object: u64,
    pub offset: u64,
    /// Stream bytes received so far.
    pub bytes: u64,
    pub toguid: u64,
    /// `dataset@snapshot` on the source.
    pub toname: String,
    pub flags: StreamFlags,
}

/// The send flags the resumed stream must keep (`zfs send -L -e -c -w`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamFlags {
    pub largeblock: bool,
    pub embed: bool,
    pub compress: bool,
    pub raw: bool,
}

impl ResumeToken {
    pub fn partial(&self) -> PartialReceive {
        PartialReceive {
            toguid: self.toguid,
            fromguid: self.fromguid,
            bytes: self.bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("resume token is {len} characters long; a real one is far shorter than {max}")]
    TooLong { len: usize, max: usize },
    #[error("resume token is not <version>-<checksum>-<size>-<payload>: {0}")]
    Format(String),
    #[error("resume token version {0} is not supported; OpenZFS writes version {VERSION}")]
    Version(u32),
    #[error("resume token payload is not hex at character {at}")]
    Hex { at: usize },
    #[error("resume token payload has checksum {found:x}, but its header says {header:x}")]
    Checksum { header: u64, found: u64 },
    #[error("resume token declares a {0}-byte nvlist; more than {MAX_PACKED} is not a real token")]
    Size(u64),
    #[error("resume token payload does not inflate: {0}")]
    Inflate(String),
    #[error("resume token nvlist is {got} bytes, but its header says {declared}")]
    Length { declared: u64, got: u64 },
    #[error("resume token nvlist, at byte {at}: {reason}")]
    Nvlist { at: usize, reason: String },
    #[error("resume token has no {0}")]
    Missing(&'static str),
}

/// Decodes `token` as `zfs send -t` would read it.
pub fn decode(token: &str) -> Result<ResumeToken, TokenError> {
    let max = 2 * MAX_PACKED as usize + 64;
    if token.len() > max {
        return Err(TokenError::TooLong {
            len: token.len(),
            max,
        });
    }
    let mut parts = token.trim().splitn(4, '-');
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| TokenError::Format(format!("no {what}")))
    };
    let (version, checksum, size, payload) = (
        next("version")?,
        next("checksum")?,
        next("size")?,
        next("payload")?,
    );
    let version: u32 = version
        .parse()
        .map_err(|_| TokenError::Format(format!("version {version:?} is not a number")))?;
    if version != VERSION {
        return Err(TokenError::Version(version));
    }
    let hex_field = |what: &str, v: &str| {
        u64::from_str_radix(v, 16)
            .map_err(|_| TokenError::Format(format!("{what} {v:?} is not a hex number")))
    };
    let checksum = hex_field("checksum", checksum)?;
    let size = hex_field("size", size)?;
    if size > MAX_PACKED {
        return Err(TokenError::Size(size));
    }
    let compressed = unhex(payload)?;
    let found = fletcher4_a(&compressed, u32::from_le_bytes);
    // The kernel sums native words: little-endian hosts write the first, big-endian the second.
    if found != checksum && fletcher4_a(&compressed, u32::from_be_bytes) != checksum {
        return Err(TokenError::Checksum {
            header: checksum,
            found,
        });
    }
    let mut packed = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(size + 1)
        .read_to_end(&mut packed)
        .map_err(|e| TokenError::Inflate(e.to_string()))?;
    if packed.len() as u64 != size {
        return Err(TokenError::Length {
            declared: size,
            got: packed.len() as u64,
        });
    }
    from_nvlist(&packed)
}

fn unhex(s: &str) -> Result<Vec<u8>, TokenError> {
    let digit = |i: usize| {
        s.as_bytes()
            .get(i)
            .and_then(|c| (*c as char).to_digit(16))
            .map(|d| d as u8)
            .ok_or(TokenError::Hex { at: i })
    };
    if !s.len().is_multiple_of(2) {
        return Err(TokenError::Hex { at: s.len() });
    }
    (0..s.len())
        .step_by(2)
        .map(|i| Ok(digit(i)? << 4 | digit(i + 1)?))
        .collect()
}

/// Word 0 of fletcher-4 (`fletcher_4_native_varsize`): the sum of the whole
/// 32-bit words, a trailing partial word left out.
fn fletcher4_a(data: &[u8], word: fn([u8; 4]) -> u32) -> u64 {
    data.chunks_exact(4)
        .map(|c| u64::from(word([c[0], c[1], c[2], c[3]])))
        .fold(0u64, u64::wrapping_add)
}

/// A cursor over a native packed nvlist.
struct Native<'a> {
    buf: &'a [u8],
    at: usize,
    little: bool,
}

/// One pair of the top-level list: name, type, element count and value bytes.
struct Pair<'a> {
    at: usize,
    name: &'a str,
    kind: i32,
    nelem: i32,
    value: &'a [u8],
}

impl<'a> Native<'a> {
    fn err(&self, at: usize, reason: impl Into<String>) -> TokenError {
        TokenError::Nvlist {
            at,
            reason: reason.into(),
        }
    }

    fn i32_at(&self, at: usize) -> Result<i32, TokenError> {
        let b: [u8; 4] = self
            .buf
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.err(at, "ends inside a 4-byte field"))?;
        Ok(if self.little {
            i32::from_le_bytes(b)
        } else {
            i32::from_be_bytes(b)
        })
    }

    fn u64_of(&self, b: [u8; 8]) -> u64 {
        if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    }

    /// The next pair of the current list, or `None` at its end marker.
    fn pair(&mut self) -> Result<Option<Pair<'a>>, TokenError> {
        let at = self.at;
        let size = self.i32_at(at)?;
        if size == 0 {
            self.at += 4;
            return Ok(None);
        }
        let buf = self.buf;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s >= PAIR_HEADER + 8 && *s <= buf.len() - at)
            .ok_or_else(|| self.err(at, format!("pair size {size} does not fit the list")))?;
        // nvp_name_sz is the i16 at offset 4 (nvp_reserve follows).
        let b = [buf[at + 4], buf[at + 5]];
        let name_sz = if self.little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        };
        let nelem = self.i32_at(at + 8)?;
        let kind = self.i32_at(at + 12)?;
        let name_end = usize::try_from(name_sz)
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| PAIR_HEADER + n)
            .filter(|e| *e <= size)
            .ok_or_else(|| self.err(at, format!("name size {name_sz} does not fit the pair")))?;
        let pair = &buf[at..at + size];
        let name = match pair[PAIR_HEADER..name_end].split_last() {
            Some((0, name)) if !name.contains(&0) => std::str::from_utf8(name).ok(),
            _ => None,
        }
        .ok_or_else(|| self.err(at, "pair name is not one NUL-terminated UTF-8 string"))?;
        // The value starts 8-aligned after the name (`NVP_VALUE`).
        let value_at = (name_end + 7) & !7;
        let value = pair.get(value_at..).unwrap_or_default();
        self.at = at + size;
        Ok(Some(Pair {
            at,
            name,
            kind,
            nelem,
            value,
        }))
    }

    /// Skips the lists an nvlist-valued pair carries after it: native
    /// packing writes an embedded list's pairs after its parent pair.
    fn skip_embedded(&mut self, p: &Pair<'_>, depth: u32) -> Result<(), TokenError> {
        let lists = match p.kind {
            DATA_TYPE_NVLIST => 1,
            DATA_TYPE_NVLIST_ARRAY => p.nelem,
            _ => return Ok(()),
        };
        if depth >= MAX_DEPTH {
            return Err(self.err(p.at, format!("nvlists nested deeper than {MAX_DEPTH}")));
        }
        if lists < 0 || lists as usize > self.buf.len() - self.at {
            return Err(self.err(p.at, format!("{lists} embedded nvlists do not fit")));
        }
        for _ in 0..lists {
            while let Some(inner) = self.pair()? {
                self.skip_embedded(&inner, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Reads the token's keys from a packed nvlist (the payload [`decode`]
/// inflates); other keys are skipped. Public so that the fuzz target reaches
/// the nvlist reader without forging a checksum and zlib for every input.
pub fn from_nvlist(buf: &[u8]) -> Result<ResumeToken, TokenError> {
    let header = buf.get(..12).ok_or(TokenError::Nvlist {
        at: 0,
        reason: format!("{} bytes is too short for the nvlist headers", buf.len()),
    })?;
    let little = match (header[0], header[1]) {
        (NV_ENCODE_NATIVE, 1) => true,
        (NV_ENCODE_NATIVE, 0) => false,
        (NV_ENCODE_NATIVE, e) => {
            return Err(TokenError::Nvlist {
                at: 1,
                reason: format!("byte order {e} is neither 0 (big) nor 1 (little endian)"),
            })
        }
        (NV_ENCODE_XDR, _) => {
            return Err(TokenError::Nvlist {
                at: 0,
                reason: "XDR-packed, but OpenZFS packs resume tokens native".into(),
            })
        }
        (e, _) => {
            return Err(TokenError::Nvlist {
                at: 0,
                reason: format!("unknown encoding {e}"),
            })
        }
    };
    // Then nvl_version and nvl_nvflag, which say nothing a reader needs.
    let mut r = Native {
        buf,
        at: 12,
        little,
    };
    let mut fromguid = None;
    let mut required: [(&'static str, Option<u64>); 4] = [
        ("object", None),
        ("offset", None),
        ("bytes", None),
        ("toguid", None),
    ];
    let mut toname = None;
    let mut flags = StreamFlags::default();
    while let Some(p) = r.pair()? {
        let u64_value = |r: &Native<'_>| match (p.kind, p.nelem, p.value.get(..8)) {
            (DATA_TYPE_UINT64, 1, Some(b)) => Ok(r.u64_of(b.try_into().expect("8 bytes"))),
            _ => Err(r.err(p.at, format!("{} is not one uint64", p.name))),
        };
        let flag = |r: &Native<'_>| match p.kind {
            DATA_TYPE_BOOLEAN => Ok(true),
            _ => Err(r.err(p.at, format!("{} is not a boolean", p.name))),
        };
        match p.name {
            "fromguid" => fromguid = Some(u64_value(&r)?),
            "toname" => {
                let s = match (p.kind, p.nelem) {
                    (DATA_TYPE_STRING, 1) => p
                        .value
                        .iter()
                        .position(|b| *b == 0)
                        .and_then(|end| std::str::from_utf8(&p.value[..end]).ok()),
                    _ => None,
                };
                let s = s.ok_or_else(|| r.err(p.at, "toname is not one UTF-8 string"))?;
                toname = Some(s.to_string());
            }
            "largeblockok" => flags.largeblock = flag(&r)?,
            "embedok" => flags.embed = flag(&r)?,
            "compressok" => flags.compress = flag(&r)?,
            "rawok" => flags.raw = flag(&r)?,
            name => match required.iter_mut().find(|(k, _)| *k == name) {
                Some((_, v)) => *v = Some(u64_value(&r)?),
                None => r.skip_embedded(&p, 0)?,
            },
        }
    }
    let [object, offset, bytes, toguid] = required.map(|(k, v)| v.ok_or(TokenError::Missing(k)));
    Ok(ResumeToken {
        // The kernel leaves fromguid out of a full stream's token; 0 means the same.
        fromguid: fromguid.filter(|g| *g != 0),
        object: object?,
        offset: offset?,
        bytes: bytes?,
        toguid: toguid?,
        toname: toname.ok_or(TokenError::Missing("toname"))?,
        flags,
    })
}

/// The token OpenZFS would write for a partial receive holding `t`, packed
/// in the order the kernel adds the keys. The simulator saves its partial
/// receives under such tokens, so that what reads real tokens reads its too.
pub fn encode(t: &ResumeToken) -> String {
    let mut p = Packer::new(true);
    if let Some(g) = t.fromguid {
        p.uint64("fromguid", g);
    }
    p.uint64("object", t.object)
        .uint64("offset", t.offset)
        .uint64("bytes", t.bytes)
        .uint64("toguid", t.toguid)
        .string("toname", &t.toname);
    let flags = [
        ("largeblockok", t.flags.largeblock),
        ("embedok", t.flags.embed),
        ("compressok", t.flags.compress),
        ("rawok", t.flags.raw),
    ];
    for (name, _) in flags.iter().filter(|(_, on)| *on) {
        p.boolean(name);
    }
    wrap(&p.end())
}

/// `1-<fletcher4 word 0>-<packed size>-<hex of zlib(packed)>`, as the kernel
/// wraps a packed nvlist.
fn wrap(packed: &[u8]) -> String {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(packed).expect("writing to a Vec");
    let compressed = z.finish().expect("writing to a Vec");
    let hex: String = compressed.iter().map(|b| format!("{b:02x}")).collect();
    let sum = fletcher4_a(&compressed, u32::from_le_bytes);
    format!("{VERSION}-{sum:x}-{:x}-{hex}", packed.len())
}

/// A native nvlist as `fnvlist_pack` lays it out, in either byte order.
struct Packer {
    buf: Vec<u8>,
    little: bool,
}

impl Packer {
    fn new(little: bool) -> Packer {
        let mut p = Packer {
            buf: vec![NV_ENCODE_NATIVE, little as u8, 0, 0],
            little,
        };
        p.i32(0); // nvl_version
        p.i32(1); // NV_UNIQUE_NAME
        p
    }

    fn i32(&mut self, v: i32) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn u64_bytes(&self, v: u64) -> [u8; 8] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    /// One pair: its header and name, then `value` (already in the list's
    /// byte order) at the next 8-byte boundary, padded to `value_len`.
    fn pair_bytes(
        &mut self,
        name: &str,
        kind: i32,
        nelem: i32,
        value: &[u8],
        value_len: usize,
    ) -> &mut Packer {
        let name_sz = name.len() + 1;
        let value_at = (PAIR_HEADER + name_sz + 7) & !7;
        let start = self.buf.len();
        self.i32((value_at + value_len) as i32);
        let name_sz = name_sz as i16;
        let b = if self.little {
            name_sz.to_le_bytes()
        } else {
            name_sz.to_be_bytes()
        };
        self.buf.extend_from_slice(&b);
        self.buf.extend_from_slice(&[0, 0]); // nvp_reserve
        self.i32(nelem);
        self.i32(kind);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.resize(start + value_at, 0);
        self.buf.extend_from_slice(value);
        self.buf.resize(start + value_at + value_len, 0);
        self
    }

    fn uint64(&mut self, name: &str, v: u64) -> &mut Packer {
        let b = self.u64_bytes(v);
        self.pair_bytes(name, DATA_TYPE_UINT64, 1, &b, 8)
    }

    fn string(&mut self, name: &str, s: &str) -> &mut Packer {
        let len = (s.len() + 1 + 7) & !7;
        self.pair_bytes(name, DATA_TYPE_STRING, 1, s.as_bytes(), len)
    }

    fn boolean(&mut self, name: &str) -> &mut Packer {
        self.pair_bytes(name, DATA_TYPE_BOOLEAN, 0, &[], 0)
    }

    fn end(&mut self) -> Vec<u8> {
        self.i32(0);
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Captured from OpenZFS 2.3.2 (the zfs-vm lane): `zfs send tp/src@s1 |
    /// head -c 9000000 | zfs recv -s tp/full`; `zfs send -nvt` printed the values.
    const FULL: &str = "1-8fca1944d-b8-789c636064000310a500c4ec50360710e72765a52697303030419460caa7a515a7968064dae0f26c48f2499525a9c540fa414c0756fd25f9e9a599290c0ca60d5a2f7a5689766a20c97382e5f31273538174817e7151b243b121030200005af01656";
    /// `zfs send -c -L -e -i @s1 tp/src@s2 | head -c 9000000 | zfs recv -s tp/inc`.
    const INCREMENTAL: &str = "1-10f4b667b6-118-789c636064000310a501c49c50360710a715e5e7a69766a63040816983d68b9e55a29d0a40363b92bafca4acd4e412060666a83a0cf9b4b4e2d412904c1b5c9e0d493ea9b224b518489f88e9c0aabf241fe28adacb6b33dedd93bcab8124cf0996cf4bcc4d05d205fac545c90ec54650774840f5c3fc979a9b949a929f0d369f1b493c393fb7a028b5b818280507005ec02668";

    #[test]
    fn decodes_a_captured_full_token() {
        let t = decode(FULL).unwrap();
        assert_eq!(
            t,
            ResumeToken {
                fromguid: None,
                object: 2,
                offset: 0x860000,
                bytes: 0x885ce0,
                toguid: 0x8915aa8ce82a8035,
                toname: "tp/src@s1".into(),
                flags: StreamFlags::default(),
            }
        );
        assert_eq!(
            t.partial(),
            PartialReceive {
                toguid: 9877988879874293813,
                fromguid: None,
                bytes: 0x885ce0,
            }
        );
    }

    #[test]
    fn decodes_a_captured_incremental_token_with_flags() {
        let t = decode(INCREMENTAL).unwrap();
        assert_eq!(t.fromguid, Some(0x8915aa8ce82a8035));
        assert_eq!((t.object, t.offset, t.bytes), (3, 0x860000, 0x885cc8));
        assert_eq!(t.toguid, 15932010272339645309);
        assert_eq!(t.toname, "tp/src@s2");
        assert_eq!(
            t.flags,
            StreamFlags {
                embed: true,
                compress: true,
                ..StreamFlags::default()
            }
        );
    }

    enum Value<'a> {
        U64(u64),
        Str(&'a str),
        Bool,
        U64s(&'a [u64]),
        /// An embedded list holding one uint64 pair, written after the pair.
        Nested,
    }

    impl Packer {
        fn pair(&mut self, name: &str, value: Value<'_>) -> &mut Packer {
            match value {
                Value::U64(v) => self.uint64(name, v),
                Value::Str(s) => self.string(name, s),
                Value::Bool => self.boolean(name),
                Value::U64s(v) => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| self.u64_bytes(*x)).collect();
                    self.pair_bytes(name, 16, v.len() as i32, &bytes, bytes.len())
                }
                Value::Nested => {
                    // sizeof (nvlist_t), then the embedded list's pairs.
                    self.pair_bytes(name, DATA_TYPE_NVLIST, 1, &[], 24);
                    self.uint64("inner", 7);
                    self.i32(0);
                    self
                }
            }
        }
    }

    /// The token string the kernel would make of `packed`.
    fn token_of(packed: &[u8]) -> String {
        wrap(packed)
    }

    fn sample(little: bool) -> Vec<u8> {
        Packer::new(little)
            .pair("fromguid", Value::U64(11))
            .pair("object", Value::U64(5))
            .pair("redact_snaps", Value::U64s(&[1, 2, 3]))
            .pair("nested", Value::Nested)
            .pair("offset", Value::U64(4096))
            .pair("bytes", Value::U64(123456))
            .pair("toguid", Value::U64(u64::MAX - 1))
            .pair("toname", Value::Str("pool/ds@zdr_20261205T075540Z"))
            .pair("rawok", Value::Bool)
            .end()
    }

    #[test]
    fn the_packer_matches_the_kernel() {
        let t = Packer::new(true)
            .pair("fromguid", Value::U64(0x8915aa8ce82a8035))
            .pair("object", Value::U64(3))
            .pair("offset", Value::U64(0x860000))
            .pair("bytes", Value::U64(0x885cc8))
            .pair("toguid", Value::U64(0xdd19deee68add37d))
            .pair("toname", Value::Str("tp/src@s2"))
            .pair("embedok", Value::Bool)
            .pair("compressok", Value::Bool)
            .end();
        assert_eq!(decode(&token_of(&t)), decode(INCREMENTAL));
        let mut real = Vec::new();
        let (_, payload) = INCREMENTAL.rsplit_once('-').unwrap();
        flate2::read::ZlibDecoder::new(&unhex(payload).unwrap()[..])
            .read_to_end(&mut real)
            .unwrap();
        assert_eq!(t, real, "byte for byte as OpenZFS 2.3.2 packed it");
    }

    #[test]
    fn encode_packs_what_the_kernel_packs() {
        // zlib output may differ between implementations; the nvlist may not.
        let inflate = |token: &str| {
            let (_, payload) = token.rsplit_once('-').unwrap();
            let mut packed = Vec::new();
            flate2::read::ZlibDecoder::new(&unhex(payload).unwrap()[..])
                .read_to_end(&mut packed)
                .unwrap();
            packed
        };
        for real in [FULL, INCREMENTAL] {
            let t = decode(real).unwrap();
            let ours = encode(&t);
            assert_eq!(
                inflate(&ours),
                inflate(real),
                "byte for byte as OpenZFS packed it"
            );
            assert_eq!(decode(&ours).unwrap(), t);
        }
    }

    #[test]
    fn skips_unknown_pairs_in_either_byte_order() {
        for little in [true, false] {
            let t = decode(&token_of(&sample(little))).unwrap();
            assert_eq!(t.fromguid, Some(11), "little endian: {little}");
            assert_eq!((t.object, t.offset, t.bytes), (5, 4096, 123456));
            assert_eq!(t.toguid, u64::MAX - 1);
            assert_eq!(t.toname, "pool/ds@zdr_20261205T075540Z");
            assert!(t.flags.raw && !t.flags.compress);
        }
    }

    #[test]
    fn a_zero_fromguid_is_a_full_stream() {
        let packed = Packer::new(true)
            .pair("fromguid", Value::U64(0))
            .pair("object", Value::U64(1))
            .pair("offset", Value::U64(0))
            .pair("bytes", Value::U64(9))
            .pair("toguid", Value::U64(2))
            .pair("toname", Value::Str("a@b"))
            .end();
        assert_eq!(decode(&token_of(&packed)).unwrap().fromguid, None);
    }

    #[test]
    fn names_a_missing_key() {
        let packed = Packer::new(true)
            .pair("object", Value::U64(1))
            .pair("offset", Value::U64(0))
            .pair("bytes", Value::U64(9))
            .pair("toname", Value::Str("a@b"))
            .end();
        assert_eq!(
            decode(&token_of(&packed)),
            Err(TokenError::Missing("toguid"))
        );
    }

    #[test]
    fn names_a_key_of_the_wrong_type() {
        let packed = Packer::new(true)
            .pair("toguid", Value::Str("not a number"))
            .end();
        let e = decode(&token_of(&packed)).unwrap_err().to_string();
        assert!(e.contains("toguid is not one uint64"), "{e}");
    }

    #[test]
    fn hostile_headers_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "no version"),
            ("1-abc", "no size"),
            ("1-abc-10-", "no payload"),
            ("x-1-1-00", "version \"x\" is not a number"),
            ("2-1-1-00", "version 2 is not supported"),
            ("1-zz-1-00", "checksum \"zz\" is not a hex number"),
            ("1-1-fffffffffffffffff-00", "size \"fffffffffffffffff\""),
            ("1-0-ffffffffffff-00", "more than 1048576"),
            ("1-0-10-0g", "not hex at character 1"),
            ("1-0-10-abc", "not hex at character 3"),
            ("1-5-10-00000001", "checksum 1000000, but its header says 5"),
        ];
        for (token, want) in cases {
            let e = decode(token).unwrap_err().to_string();
            assert!(e.contains(want), "{token:?}: {e}");
        }
        let long = "1-0-0-".to_string() + &"0".repeat(3 << 20);
        assert!(matches!(decode(&long), Err(TokenError::TooLong { .. })));
    }

    #[test]
    fn bad_zlib_and_wrong_sizes_are_refused() {
        let packed = sample(true);
        let good = token_of(&packed);
        // Not zlib at all, with a checksum that matches.
        let junk = [0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4];
        let hex: String = junk.iter().map(|b| format!("{b:02x}")).collect();
        let sum = fletcher4_a(&junk, u32::from_le_bytes);
        let e = decode(&format!("1-{sum:x}-10-{hex}")).unwrap_err();
        assert!(matches!(e, TokenError::Inflate(_)), "{e}");
        // A declared size smaller or larger than what inflates.
        let (head, payload) = good.rsplit_once('-').unwrap();
        let (sum, _) = head[2..].split_once('-').unwrap();
        for declared in [packed.len() - 1, packed.len() + 1] {
            let e = decode(&format!("1-{sum}-{declared:x}-{payload}")).unwrap_err();
            assert!(matches!(e, TokenError::Length { .. }), "{e}");
        }
    }

    #[test]
    fn truncated_and_corrupt_nvlists_are_refused() {
        let packed = sample(true);
        for cut in 0..packed.len() {
            assert!(decode(&token_of(&packed[..cut])).is_err(), "cut at {cut}");
        }
        let mut xdr = packed.clone();
        xdr[0] = NV_ENCODE_XDR;
        let e = decode(&token_of(&xdr)).unwrap_err().to_string();
        assert!(e.contains("XDR-packed"), "{e}");
        // The first pair's size claims more than the list holds.
        let mut huge = packed.clone();
        huge[12..16].copy_from_slice(&i32::MAX.to_le_bytes());
        let e = decode(&token_of(&huge)).unwrap_err().to_string();
        assert!(e.contains("at byte 12: pair size 2147483647"), "{e}");
        // An embedded-list array claiming more lists than bytes left.
        let mut many = Packer::new(true).pair("n", Value::Nested).end();
        many[20..24].copy_from_slice(&i32::MAX.to_le_bytes());
        many[24..28].copy_from_slice(&DATA_TYPE_NVLIST_ARRAY.to_le_bytes());
        let e = decode(&token_of(&many)).unwrap_err().to_string();
        assert!(e.contains("embedded nvlists do not fit"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(s in "\\PC{0,300}") {
            let _ = decode(&s);
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&token_of(&bytes));
        }

        #[test]
        fn mutated_real_nvlists_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut packed = sample(true);
            for (at, b) in flips {
                let n = packed.len();
                packed[at % n] = b;
            }
            let _ = decode(&token_of(&packed));
        }
    }
}
