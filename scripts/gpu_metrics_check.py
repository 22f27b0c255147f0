"""Checks gpu-monitor's /metrics with prometheus_client's text parser.

Usage: gpu_metrics_check.py URL. Polls URL (deadline 30 s) until GPU 1's
GPUResetRequired series is 1 and its XID 48 counter counts, then checks the
families, their types and the per-GPU labels of 8 GPUs. Exit 1 on failure.
"""

import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

GPUS = 8
PER_GPU_CONDITIONS = 9
WANT = {
    "npd_ext_gpu_condition": "gauge",
    "npd_ext_gpu_xids": "counter",
    "npd_ext_gpu_ecc_uncorrected_errors": "counter",
    "npd_ext_gpu_ecc_corrected_errors": "counter",
    "npd_ext_gpu_pcie_replays": "counter",
    "npd_ext_gpu_nvlink_errors": "counter",
    "npd_ext_gpu_remapped_rows_uncorrectable": "gauge",
    "npd_ext_gpu_row_remap_pending": "gauge",
    "npd_ext_gpu_row_remap_failure": "gauge",
    "npd_ext_gpu_nvml_call_duration_seconds": "histogram",
    "npd_ext_gpu_nvml_call_timeouts": "counter",
    "npd_ext_gpu_last_good_sweep_timestamp_seconds": "gauge",
    "npd_ext_gpu_readings_available": "gauge",
}
FORBIDDEN = ("util", "clock", "power")


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        ctype = r.headers.get("Content-Type", "")
        return ctype, r.read().decode()


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, family, sample, **labels):
    f = fams.get(family)
    if f is None:
        return None
    for s in f.samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def main():
    url = sys.argv[1]
    deadline = time.monotonic() + 30
    while True:
        ctype, text = scrape(url)
        fams = families(text)
        reset = value(fams, "npd_ext_gpu_condition", "npd_ext_gpu_condition",
                      gpu="1", condition="GPUResetRequired")
        xid = value(fams, "npd_ext_gpu_xids", "npd_ext_gpu_xids_total", gpu="1", xid="48")
        if reset == 1 and xid is not None and xid >= 1:
            break
        if time.monotonic() > deadline:
            print(f"timed out: GPUResetRequired on GPU 1 = {reset}, XID 48 = {xid}", file=sys.stderr)
            return 1
        time.sleep(0.1)

    failures = []
    if not ctype.startswith("text/plain"):
        failures.append(f"content type {ctype!r}")
    for name, kind in WANT.items():
        f = fams.get(name)
        if f is None:
            failures.append(f"family {name} missing")
        elif f.type != kind:
            failures.append(f"{name} is a {f.type}, want {kind}")
    for name in fams:
        if any(w in name for w in FORBIDDEN):
            failures.append(f"{name}: utilisation, clocks and power are DCGM exporter's")
    cond = fams["npd_ext_gpu_condition"].samples
    gpus = {(s.labels["gpu"], s.labels["uuid"], s.labels["pci"]) for s in cond}
    if len(gpus) != GPUS or len({g[1] for g in gpus}) != GPUS or len({g[2] for g in gpus}) != GPUS:
        failures.append(f"want {GPUS} GPUs with distinct uuid and pci labels, found {sorted(gpus)}")
    if len(cond) != GPUS * PER_GPU_CONDITIONS:
        failures.append(f"{len(cond)} condition series, want {GPUS * PER_GPU_CONDITIONS}")
    on = [(s.labels["gpu"], s.labels["condition"]) for s in cond if s.value == 1]
    if on != [("1", "GPUResetRequired")]:
        failures.append(f"conditions at 1: {on}, want only GPU 1 GPUResetRequired")
    for name in ("npd_ext_gpu_pcie_replays", "npd_ext_gpu_ecc_uncorrected_errors",
                 "npd_ext_gpu_ecc_corrected_errors", "npd_ext_gpu_nvlink_errors"):
        n = len({s.labels["gpu"] for s in fams[name].samples if s.name.endswith("_total")})
        if n != GPUS:
            failures.append(f"{name}: {n} GPUs, want {GPUS}")
    storm = value(fams, "npd_ext_gpu_xids", "npd_ext_gpu_xids_total", gpu="5", xid="13")
    if storm != 3:
        failures.append(f"XID 13 on GPU 5 counted {storm}, want 3")
    replays = value(fams, "npd_ext_gpu_pcie_replays", "npd_ext_gpu_pcie_replays_total", gpu="3")
    if not replays or replays <= 0:
        failures.append(f"PCIe replays on GPU 3: {replays}, want > 0")
    corrected = value(fams, "npd_ext_gpu_ecc_corrected_errors",
                      "npd_ext_gpu_ecc_corrected_errors_total", gpu="3")
    if not corrected or corrected <= 0:
        failures.append(f"corrected ECC errors on GPU 3: {corrected}, want > 0")
    timeouts = value(fams, "npd_ext_gpu_nvml_call_timeouts", "npd_ext_gpu_nvml_call_timeouts_total",
                     worker="sim-driver")
    if timeouts != 0:
        failures.append(f"sim driver call timeouts: {timeouts}, want 0")
    calls = value(fams, "npd_ext_gpu_nvml_call_duration_seconds",
                  "npd_ext_gpu_nvml_call_duration_seconds_count", worker="sim-driver")
    if not calls:
        failures.append("no NVML call durations for the sim driver")
    if value(fams, "npd_ext_gpu_readings_available", "npd_ext_gpu_readings_available") != 1:
        failures.append("readings not available")
    sweep = value(fams, "npd_ext_gpu_last_good_sweep_timestamp_seconds",
                  "npd_ext_gpu_last_good_sweep_timestamp_seconds")
    if sweep is None or abs(time.time() - sweep) > 30:
        failures.append(f"last good sweep at {sweep}, now {time.time()}")

    if failures:
        for f in failures:
            print("FAIL: " + f, file=sys.stderr)
        return 1
    print(f"ok: {len(fams)} families parsed by prometheus_client; {GPUS} GPUs; "
          f"GPU 1 GPUResetRequired=1, XID 48 counted {int(xid)}, XID 13 on GPU 5 counted {int(storm)}; "
          f"{int(calls)} NVML calls timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
