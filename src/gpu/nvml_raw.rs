//! NVML calls that nvml-wrapper 0.13 has no safe wrapper for, reached through
//! the library's own symbols. The only module allowed `unsafe`: each block
//! says why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::os::raw::c_uint;

use libloading::Library;
use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlGpuFabricInfo_t, nvmlMarginTemperature_t, nvmlReturn_t,
};

/// `nvmlDeviceGetRemappedRows` (nvml.h, R460+).
type GetRemappedRows = unsafe extern "C" fn(
    nvmlDevice_t,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
) -> nvmlReturn_t;

/// `nvmlDeviceGetGpuFabricInfo` (nvml.h, R525+; the unversioned form).
type GetFabricInfo = unsafe extern "C" fn(nvmlDevice_t, *mut nvmlGpuFabricInfo_t) -> nvmlReturn_t;

/// `nvmlDeviceGetMarginTemperature` (nvml.h, R555+).
type GetMarginTemperature =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMarginTemperature_t) -> nvmlReturn_t;

/// `NVML_STRUCT_VERSION(MarginTemperature, 1)`: the struct's size with the
/// version in the top byte.
const MARGIN_TEMPERATURE_V1: u32 = size_of::<nvmlMarginTemperature_t>() as u32 | (1 << 24);

/// A GPU's NVLink fabric registration (NVSwitch systems).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FabricInfo {
    /// `NVML_GPU_FABRIC_STATE_*`: 0 not supported, 1 not started, 2 in progress, 3 completed.
    pub state: u32,
    /// The registration's result once completed (0 = success).
    pub status: u32,
}

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
    fabric_info: Option<GetFabricInfo>,
    margin_temperature: Option<GetMarginTemperature>,
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
        // SAFETY: the type matches the C prototype of nvmlDeviceGetGpuFabricInfo
        // in nvml.h: (nvmlDevice_t, nvmlGpuFabricInfo_t*) -> nvmlReturn_t, with
        // the struct as nvml-wrapper-sys generates it from that header. Valid
        // while `_library` is loaded.
        let fabric_info = unsafe { library.get::<GetFabricInfo>(b"nvmlDeviceGetGpuFabricInfo\0") }
            .ok()
            .map(|symbol| *symbol);
        // SAFETY: the type matches the C prototype of nvmlDeviceGetMarginTemperature
        // in nvml.h: (nvmlDevice_t, nvmlMarginTemperature_t*) -> nvmlReturn_t.
        // Valid while `_library` is loaded.
        let margin_temperature =
            unsafe { library.get::<GetMarginTemperature>(b"nvmlDeviceGetMarginTemperature\0") }
                .ok()
                .map(|symbol| *symbol);
        Ok(Self {
            remapped_rows,
            fabric_info,
            margin_temperature,
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

    /// Fabric state, or `None` when the driver lacks the call.
    pub fn fabric_info(&self, device: &Device<'_>) -> Option<Result<FabricInfo, NvmlError>> {
        let get = self.fabric_info?;
        let mut info = nvmlGpuFabricInfo_t {
            clusterUuid: [0; 16],
            status: 0,
            cliqueId: 0,
            state: 0,
        };
        // SAFETY: `device.handle()` is a live handle owned by the `Nvml` the
        // caller borrows for the whole call; `info` is a properly aligned,
        // writable `nvmlGpuFabricInfo_t` that outlives the call; `get` is valid
        // while `self._library` is loaded.
        let rc = unsafe { get(device.handle(), &mut info) };
        Some(nvml_try(rc).map(|()| FabricInfo {
            state: u32::from(info.state),
            status: info.status,
        }))
    }

    /// Degrees (°C) left before the GPU slows down, or `None` when the driver
    /// lacks the call.
    pub fn margin_temperature(&self, device: &Device<'_>) -> Option<Result<i32, NvmlError>> {
        let get = self.margin_temperature?;
        let mut info = nvmlMarginTemperature_t {
            version: MARGIN_TEMPERATURE_V1,
            marginTemperature: 0,
        };
        // SAFETY: as for `remapped_rows`: a live handle, a writable struct
        // whose `version` names the layout we pass, a symbol kept loaded.
        let rc = unsafe { get(device.handle(), &mut info) };
        Some(nvml_try(rc).map(|()| info.marginTemperature))
    }
}
