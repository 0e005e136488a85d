//! The only unsafe code of the `lzc` backend: the bindgen output, an owned
//! [`NvList`], and one safe function per libzfs_core call used. Everything
//! here takes already-validated names as `CStr`s; nothing here knows about
//! datasets or [`ZfsError`](super::ZfsError) except the /dev/zfs open.
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr, CString};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::{Mutex, PoisonError};

#[allow(
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/lzc_bindings.rs"));
}

/// An owned `nvlist_t` (always allocated with `NV_UNIQUE_NAME`: adding a name
/// twice replaces the first), freed on drop.
pub(super) struct NvList(NonNull<sys::nvlist_t>);

impl NvList {
    pub fn new() -> Self {
        // fnvlist_alloc aborts the process when out of memory, as Rust's own
        // allocator does, and never returns NULL.
        let raw = unsafe { sys::fnvlist_alloc() };
        NvList(NonNull::new(raw).expect("fnvlist_alloc returned NULL"))
    }

    /// Takes ownership of a list that libzfs_core allocated for the caller.
    ///
    /// # Safety
    /// `raw` is NULL or a valid nvlist that nothing else frees or uses.
    unsafe fn from_raw(raw: *mut sys::nvlist_t) -> Option<Self> {
        NonNull::new(raw).map(NvList)
    }

    /// For calls that take `nvlist_t *` but only read it.
    fn as_ptr(&self) -> *mut sys::nvlist_t {
        self.0.as_ptr()
    }

    /// `name` with no value: how libzfs_core spells a set of names.
    pub fn add_boolean(&mut self, name: &CStr) {
        unsafe { sys::fnvlist_add_boolean(self.as_ptr(), name.as_ptr()) }
    }

    pub fn add_string(&mut self, name: &CStr, value: &CStr) {
        unsafe { sys::fnvlist_add_string(self.as_ptr(), name.as_ptr(), value.as_ptr()) }
    }

    /// Adds a copy of `value`.
    pub fn add_nvlist(&mut self, name: &CStr, value: &NvList) {
        unsafe { sys::fnvlist_add_nvlist(self.as_ptr(), name.as_ptr(), value.as_ptr()) }
    }

    #[cfg(test)]
    pub fn add_int32(&mut self, name: &CStr, value: i32) {
        unsafe { sys::fnvlist_add_int32(self.as_ptr(), name.as_ptr(), value) }
    }

    #[cfg(test)]
    pub fn add_uint64(&mut self, name: &CStr, value: u64) {
        unsafe { sys::fnvlist_add_uint64(self.as_ptr(), name.as_ptr(), value) }
    }

    /// The pairs in insertion order.
    pub fn iter(&self) -> Pairs<'_> {
        Pairs {
            list: self,
            prev: ptr::null_mut(),
        }
    }
}

impl Drop for NvList {
    fn drop(&mut self) {
        unsafe { sys::fnvlist_free(self.as_ptr()) }
    }
}

/// One pair of an [`NvList`], valid while the list is borrowed.
pub(super) struct Pair<'a> {
    raw: NonNull<sys::nvpair_t>,
    _list: PhantomData<&'a NvList>,
}

impl Pair<'_> {
    /// The name; ZFS names are ASCII, anything else is shown lossily.
    pub fn name(&self) -> String {
        let name = unsafe { CStr::from_ptr(sys::nvpair_name(self.raw.as_ptr())) };
        name.to_string_lossy().into_owned()
    }

    /// The value, when it is an int32 (the type of errlist entries).
    pub fn int32(&self) -> Option<i32> {
        let mut value = 0i32;
        let rc = unsafe { sys::nvpair_value_int32(self.raw.as_ptr(), &mut value) };
        (rc == 0).then_some(value)
    }

    /// The value, when it is a uint64 (the type of bookmark properties).
    pub fn uint64(&self) -> Option<u64> {
        let mut value = 0u64;
        let rc = unsafe { sys::nvpair_value_uint64(self.raw.as_ptr(), &mut value) };
        (rc == 0).then_some(value)
    }

    /// The value, when it is an nvlist (a copy).
    pub fn nvlist(&self) -> Option<NvList> {
        let mut value: *mut sys::nvlist_t = ptr::null_mut();
        let rc = unsafe { sys::nvpair_value_nvlist(self.raw.as_ptr(), &mut value) };
        if rc != 0 {
            return None;
        }
        // nvpair_value_nvlist lends the embedded list; take a copy to own.
        let copy = unsafe { sys::fnvlist_dup(value) };
        unsafe { NvList::from_raw(copy) }
    }

    #[cfg(test)]
    pub fn string(&self) -> Option<String> {
        let mut value: *const std::ffi::c_char = ptr::null();
        let rc = unsafe { sys::nvpair_value_string(self.raw.as_ptr(), &mut value) };
        (rc == 0 && !value.is_null()).then(|| {
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned()
        })
    }
}

pub(super) struct Pairs<'a> {
    list: &'a NvList,
    prev: *mut sys::nvpair_t,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Pair<'a>;

    fn next(&mut self) -> Option<Pair<'a>> {
        let next = unsafe { sys::nvlist_next_nvpair(self.list.as_ptr(), self.prev) };
        let raw = NonNull::new(next)?;
        self.prev = next;
        Some(Pair {
            raw,
            _list: PhantomData,
        })
    }
}

/// What a libzfs_core call that reports per-object errors returned: its
/// result and the errlist entries (object name, errno).
pub(super) struct Outcome {
    pub rc: i32,
    pub errlist: Vec<(String, i32)>,
}

fn with_errlist(call: impl FnOnce(*mut *mut sys::nvlist_t) -> c_int) -> Outcome {
    let mut raw: *mut sys::nvlist_t = ptr::null_mut();
    let rc = call(&mut raw);
    // libzfs_core hands the errlist (possibly NULL) to the caller to free.
    let list = unsafe { NvList::from_raw(raw) };
    let errlist = list.map(|l| errlist_entries(&l)).unwrap_or_default();
    Outcome { rc, errlist }
}

/// `name -> int32 errno` pairs; other value types (none are documented) are
/// kept with errno 0 so they do not pass for success or failure silently.
pub(super) fn errlist_entries(list: &NvList) -> Vec<(String, i32)> {
    list.iter()
        .map(|p| (p.name(), p.int32().unwrap_or(0)))
        .collect()
}

/// Opens /dev/zfs for libzfs_core once per process. A failure is not
/// remembered, so an agent started before the zfs module was loaded works
/// once it is.
pub(super) fn init() -> Result<(), i32> {
    static OPENED: Mutex<bool> = Mutex::new(false);
    let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    if *opened {
        return Ok(());
    }
    // Returns 0 or the errno of open("/dev/zfs"). Never finalised: the
    // descriptor lives as long as the process.
    match unsafe { sys::libzfs_core_init() } {
        0 => {
            *opened = true;
            Ok(())
        }
        errno => Err(errno),
    }
}

/// `lzc_snapshot`: every name in `snaps` (a boolean set of `ds@snap`, one
/// pool) in one transaction; no properties.
pub(super) fn snapshot(snaps: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe { sys::lzc_snapshot(snaps.as_ptr(), ptr::null_mut(), errlist) })
}

/// `lzc_destroy_snaps` without defer: refused while held or cloned.
pub(super) fn destroy_snaps(snaps: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe {
        sys::lzc_destroy_snaps(snaps.as_ptr(), sys::boolean_t_B_FALSE, errlist)
    })
}

/// `lzc_hold` with `snap -> tag` pairs and no cleanup descriptor: the holds
/// persist like those of `zfs hold`.
pub(super) fn hold(holds: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe { sys::lzc_hold(holds.as_ptr(), -1, errlist) })
}

/// `lzc_release` with `snap -> { tag, ... }`.
pub(super) fn release(holds: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe { sys::lzc_release(holds.as_ptr(), errlist) })
}

/// `lzc_bookmark` with `pool/fs#bookmark -> pool/fs@snapshot` pairs.
pub(super) fn bookmark(bookmarks: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe { sys::lzc_bookmark(bookmarks.as_ptr(), errlist) })
}

/// The list a call handed to the caller (possibly NULL: empty), or its errno.
fn returned_list(rc: c_int, raw: *mut sys::nvlist_t) -> Result<NvList, i32> {
    // Whatever rc says, what the call allocated is ours to free.
    let list = unsafe { NvList::from_raw(raw) };
    match (rc, list) {
        (0, Some(list)) => Ok(list),
        (0, None) => Ok(NvList::new()),
        (errno, _) => Err(errno),
    }
}

/// `lzc_get_holds`: `tag -> creation time` of one snapshot, or the errno.
pub(super) fn get_holds(snapshot: &CStr) -> Result<NvList, i32> {
    let mut raw: *mut sys::nvlist_t = ptr::null_mut();
    let rc = unsafe { sys::lzc_get_holds(snapshot.as_ptr(), &mut raw) };
    returned_list(rc, raw)
}

/// `lzc_get_bookmarks`: `short name -> { property -> { "value" -> uint64 } }`
/// for the bookmarks of one filesystem, with the properties named in `props`
/// (a boolean set); or the errno.
pub(super) fn get_bookmarks(fs: &CStr, props: &NvList) -> Result<NvList, i32> {
    let mut raw: *mut sys::nvlist_t = ptr::null_mut();
    let rc = unsafe { sys::lzc_get_bookmarks(fs.as_ptr(), props.as_ptr(), &mut raw) };
    returned_list(rc, raw)
}

/// `lzc_destroy_bookmarks` of a boolean set of `pool/fs#bookmark` names (one
/// pool). A bookmark that does not exist is skipped without an error.
pub(super) fn destroy_bookmarks(bookmarks: &NvList) -> Outcome {
    with_errlist(|errlist| unsafe { sys::lzc_destroy_bookmarks(bookmarks.as_ptr(), errlist) })
}

/// `lzc_exists`: whether the dataset, snapshot or bookmark exists.
pub(super) fn exists(name: &CStr) -> bool {
    unsafe { sys::lzc_exists(name.as_ptr()) != sys::boolean_t_B_FALSE }
}

/// `ZFS_ERR_STREAM_TRUNCATED`: a receive whose stream ended early.
pub(super) const ERR_STREAM_TRUNCATED: i32 = sys::zfs_errno_t_ZFS_ERR_STREAM_TRUNCATED as i32;

/// The flags of `zfs send` (none) or `zfs send -w` (raw, which zfs(8) pairs
/// with compressed, embedded and large blocks).
fn send_flags(raw: bool) -> sys::lzc_send_flags {
    if raw {
        sys::lzc_send_flags_LZC_SEND_FLAG_RAW
            | sys::lzc_send_flags_LZC_SEND_FLAG_COMPRESS
            | sys::lzc_send_flags_LZC_SEND_FLAG_EMBED_DATA
            | sys::lzc_send_flags_LZC_SEND_FLAG_LARGE_BLOCK
    } else {
        0
    }
}

fn opt_ptr(name: Option<&CStr>) -> *const std::ffi::c_char {
    name.map_or(ptr::null(), CStr::as_ptr)
}

/// `lzc_send`: the stream of `snapshot` (incremental from the snapshot or
/// bookmark `from`) written to `fd`, which is closed when the call returns.
/// Returns 0 or the errno.
pub(super) fn send(snapshot: &CStr, from: Option<&CStr>, fd: OwnedFd, raw: bool) -> i32 {
    let rc = unsafe {
        sys::lzc_send(
            snapshot.as_ptr(),
            opt_ptr(from),
            fd.as_raw_fd(),
            send_flags(raw),
        )
    };
    drop(fd);
    rc
}

/// `lzc_send_space`: the size the stream of [`send`] would have.
pub(super) fn send_space(snapshot: &CStr, from: Option<&CStr>, raw: bool) -> Result<u64, i32> {
    let mut space = 0u64;
    let rc = unsafe {
        sys::lzc_send_space(
            snapshot.as_ptr(),
            opt_ptr(from),
            send_flags(raw),
            &mut space,
        )
    };
    match rc {
        0 => Ok(space),
        errno => Err(errno),
    }
}

/// `lzc_receive_resumable` of one (non-package) stream read from `fd`, which
/// is closed when the call returns, into `snapshot`: no properties, no
/// origin, no force; a stream that ends early leaves a resume token. Does
/// not mount. Returns 0 or the errno.
pub(super) fn receive(snapshot: &CStr, raw: bool, fd: OwnedFd) -> i32 {
    let raw = if raw {
        sys::boolean_t_B_TRUE
    } else {
        sys::boolean_t_B_FALSE
    };
    let rc = unsafe {
        sys::lzc_receive_resumable(
            snapshot.as_ptr(),
            ptr::null_mut(),
            ptr::null(),
            sys::boolean_t_B_FALSE,
            raw,
            fd.as_raw_fd(),
        )
    };
    drop(fd);
    rc
}

/// A name for libzfs_core; `None` when it holds a NUL, which no validated
/// ZFS name can.
pub(super) fn c_name(name: &str) -> Option<CString> {
    CString::new(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        c_name(s).unwrap()
    }

    #[test]
    fn empty_list_has_no_pairs() {
        let list = NvList::new();
        assert_eq!(list.iter().count(), 0);
        assert!(errlist_entries(&list).is_empty());
        assert!(unsafe { NvList::from_raw(ptr::null_mut()) }.is_none());
    }

    #[test]
    fn pairs_come_back_in_insertion_order_with_their_values() {
        let mut list = NvList::new();
        list.add_boolean(&c("tank/my data@s 1"));
        list.add_string(&c("tank/a@s"), &c("zdr keep"));
        list.add_int32(&c("tank/b@s"), 17);
        let names: Vec<String> = list.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["tank/my data@s 1", "tank/a@s", "tank/b@s"]);
        let pairs: Vec<Pair<'_>> = list.iter().collect();
        assert_eq!(pairs[0].int32(), None);
        assert_eq!(pairs[0].string(), None);
        assert_eq!(pairs[1].string().as_deref(), Some("zdr keep"));
        assert_eq!(pairs[1].int32(), None);
        assert_eq!(pairs[2].int32(), Some(17));
        assert_eq!(
            errlist_entries(&list),
            [
                ("tank/my data@s 1".to_string(), 0),
                ("tank/a@s".to_string(), 0),
                ("tank/b@s".to_string(), 17)
            ]
        );
    }

    #[test]
    fn names_are_unique_and_a_second_add_replaces() {
        let mut list = NvList::new();
        list.add_string(&c("x"), &c("first"));
        list.add_boolean(&c("y"));
        list.add_string(&c("x"), &c("second"));
        let got: Vec<(String, Option<String>)> =
            list.iter().map(|p| (p.name(), p.string())).collect();
        assert_eq!(
            got,
            [
                ("y".to_string(), None),
                ("x".to_string(), Some("second".to_string()))
            ]
        );
    }

    #[test]
    fn nested_lists_are_copied_in() {
        let mut tags = NvList::new();
        tags.add_boolean(&c("zdr"));
        tags.add_boolean(&c("other tool"));
        let mut holds = NvList::new();
        holds.add_nvlist(&c("tank/a@s"), &tags);
        // The outer list owns its own copy: changing or dropping the inner
        // one afterwards does not reach it.
        tags.add_boolean(&c("late"));
        drop(tags);
        let pairs: Vec<Pair<'_>> = holds.iter().collect();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].name(), "tank/a@s");
        let inner = pairs[0].nvlist().unwrap();
        let names: Vec<String> = inner.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["zdr", "other tool"]);
        assert!(pairs[0].int32().is_none());
    }

    #[test]
    fn many_lists_alloc_and_free_cleanly() {
        for i in 0..1000 {
            let mut list = NvList::new();
            for j in 0..10 {
                list.add_int32(&c(&format!("pool/ds{i}@s{j}")), j);
            }
            assert_eq!(errlist_entries(&list).len(), 10);
        }
    }

    #[test]
    fn names_with_nul_are_refused() {
        assert!(c_name("tank/a\0b").is_none());
        assert_eq!(c_name("tank/a b").unwrap().as_bytes(), b"tank/a b");
    }
}
