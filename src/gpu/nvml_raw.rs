//! NVML calls that nvml-wrapper 0.13 has no safe wrapper for, reached through
//! the library's own symbols. The only module allowed `unsafe`: each block
//! says why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::os::raw::c_uint;

use libloading::Library;
use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlReturn_t};

/// `nvmlDeviceGetRemappedRows` (nvml.h, R460+).
type GetRemappedRows = unsafe extern "C" fn(
    nvmlDevice_t,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
) -> nvmlReturn_t;

/// Row remapping counters of one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemappedRows {
    pub corrected: u32,
    pub uncorrected: u32,
    pub pending: bool,
    pub failure: bool,
}

/// Symbols looked up in the NVML library that nvml-wrapper loaded.
#[derive(Debug)]
pub struct RawNvml {
    remapped_rows: Option<GetRemappedRows>,
    // Keeps the symbols above valid; dropped last.
    _library: Library,
}

impl RawNvml {
    /// Opens `path` again (the loader only raises the reference count of the
    /// library nvml-wrapper already holds) and looks up the symbols; a
    /// missing symbol (an older driver) leaves that call unavailable.
    pub fn open(path: &OsStr) -> Result<Self, libloading::Error> {
        // SAFETY: this is the NVML library that `Nvml::builder().lib_path(path)`
        // has just loaded and initialised from the same path, so loading it
        // again runs no new initialisers; it only adds a reference.
        let library = unsafe { Library::new(path) }?;
        // SAFETY: the type matches the C prototype of nvmlDeviceGetRemappedRows
        // in nvml.h: (nvmlDevice_t, unsigned int*, unsigned int*, unsigned int*,
        // unsigned int*) -> nvmlReturn_t. The pointer is copied out and stays
        // valid while `_library` is loaded, which `Self` guarantees.
        let remapped_rows =
            unsafe { library.get::<GetRemappedRows>(b"nvmlDeviceGetRemappedRows\0") }
                .ok()
                .map(|symbol| *symbol);
        Ok(Self {
            remapped_rows,
            _library: library,
        })
    }

    /// Row remapping state, or `None` when the driver lacks the call.
    pub fn remapped_rows(&self, device: &Device<'_>) -> Option<Result<RemappedRows, NvmlError>> {
        let get = self.remapped_rows?;
        let mut rows = [0 as c_uint; 4];
        let [corrected, uncorrected, pending, failure] = &mut rows;
        // SAFETY: `device.handle()` is a live handle owned by the `Nvml` that
        // the caller borrows for the whole call; the four out-pointers point
        // to distinct, writable `c_uint`s that outlive the call; `get` is valid
        // while `self._library` is loaded.
        let rc = unsafe { get(device.handle(), corrected, uncorrected, pending, failure) };
        Some(nvml_try(rc).map(|()| RemappedRows {
            corrected: rows[0],
            uncorrected: rows[1],
            pending: rows[2] != 0,
            failure: rows[3] != 0,
        }))
    }
}
