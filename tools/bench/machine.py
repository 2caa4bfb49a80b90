"""The CPU a benchmark ran on, for the JSON of the bench/run_*_vs_torch.sh scripts."""
import re


def cpu_info():
    """{"cpu": model name, "cpu_flags": its AVX / AMX / FMA flags} from /proc/cpuinfo."""
    name, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "?":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    return {"cpu": name, "cpu_flags": sorted(f for f in flags if re.match(r"avx|amx|fma", f))}
