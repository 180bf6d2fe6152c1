"""What a timing was measured on, written into every benchmark result.

Timings from different machines are not comparable: the 2-core CPUs these benchmarks have run on differ
in vector units (AVX2 on some, AVX-512 with AMX on others): fp32 matmul ran at about 53 GFLOP/s per core
on the first and 191 on the second, and a few-shot run on the second took 5-7x less time.
"""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(device: torch.device | str | None = None) -> dict:
    """CPU model, usable CPUs, torch's threads and the vector instruction set its kernels use; with a CUDA
    ``device``, also the GPU's name (the CPU then mostly waits)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:  # not Linux
        pass
    machine = {
        "cpu": model,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }
    if device is not None and torch.device(device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return machine


def machine_text(machine: dict | None) -> str:
    """One line for a table: "[GPU on] CPU, ISA, T of N CPUs" ("not recorded" for results stored before
    machines were)."""
    if machine is None:
        return "not recorded"
    cpu = f"{machine['cpu']}, {machine['isa']}, {machine['threads']} of {machine['cpus']} CPUs"
    return f"{machine['gpu']} on {cpu}" if "gpu" in machine else cpu
