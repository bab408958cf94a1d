#!/usr/bin/env python3
"""Paper estimate of Kestrel's latency on a Raspberry Pi 4 / Pi 5 (see docs/latency.md).

Subcommands:
  macs BUNDLE_DIR...        multiply-accumulates per frame, counted from the ONNX graphs
                            (needs `pip install onnx`)
  count [opts] -- CMD...    guest instructions per iteration of an aarch64 program under
                            qemu-aarch64, per symbol group, from two runs whose iteration counts
                            differ ({N} in CMD is replaced by --n1 / --n2). Builds a small TCG
                            plugin with gcc (Debian's qemu-user ships none). Single-threaded
                            programs only (the plugin's counters are not atomic).
  estimate [--counts F]     the latency table of docs/latency.md, from the instruction counts
                            (the ones measured for the doc by default) and published figures

Examples:
  python3 scripts/latency_estimate.py macs /tmp/b-none /tmp/b-all
  python3 scripts/latency_estimate.py count --cpu cortex-a72 --n1 1 --n2 6 -- \\
      $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/debug/kestrel-edge bench \\
      --bundle /tmp/b-none --threads 1 --iterations {N} --json
  python3 scripts/latency_estimate.py estimate
"""

import argparse
import bisect
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

# --- Published figures (docs/latency.md cites them) ---------------------------------------------
# ncnn benchncnn, github.com/Tencent/ncnn/blob/master/benchmark/README.md, 1 thread, ms.
# Pi 4: BCM2711 4x Cortex-A72 1.8 GHz (fp32: the A72 has no fp16 arithmetic).
# Pi 5: BCM2712 4x Cortex-A76 2.4 GHz (benchncnn enables fp16 arithmetic, which the A76 has, so
# its "fp32" models run in fp16; int8 uses the A76's sdot).
NCNN_MS = {
    ("pi4", "mobilenet_v2"): 93.48, ("pi4", "mobilenet_int8"): 84.82,
    ("pi5", "mobilenet_v2"): 16.38, ("pi5", "mobilenet_int8"): 14.44,
}
NCNN_MS_4T = {("pi4", "mobilenet_v2"): 61.88, ("pi5", "mobilenet_v2"): 10.52}
BOARDS = {"pi4": ("Raspberry Pi 4", "cortex-a72", 1.8e9), "pi5": ("Raspberry Pi 5", "cortex-a76", 2.4e9)}

# --- Measured for the doc (qemu-aarch64 7.2 + this script's plugin, 1 thread) ------------------
# ncnn (Tencent/ncnn master, benchncnn cross-built for aarch64, NCNN_OPENMP=OFF): instructions per
# inference; -cpu cortex-a76 takes ncnn's fp16 / sdot paths like the real Pi 5 did.
NCNN_INSNS = {
    ("pi4", "mobilenet_v2"): 104.4e6, ("pi4", "mobilenet_int8"): 155.3e6,
    ("pi5", "mobilenet_v2"): 55.2e6, ("pi5", "mobilenet_int8"): 63.0e6,
}
# kestrel-edge bench (aarch64 debug profile: dependencies at opt-level 3), per frame.
KESTREL_INSNS = {
    # bundle: {cpu: {group: instructions}}; "inference" includes "mmm" (tract's matmul kernels)
    "fp32": {
        "cortex-a72": {"decode": 12.6e6, "preprocess": 9.3e6, "inference": 189.7e6, "mmm": 112.0e6},
        "cortex-a76": {"decode": 12.6e6, "preprocess": 9.3e6, "inference": 189.7e6, "mmm": 112.0e6},
    },
    "int8": {
        "cortex-a72": {"decode": 12.6e6, "preprocess": 9.1e6, "inference": 288.7e6, "mmm": 130.4e6},
        "cortex-a76": {"decode": 12.6e6, "preprocess": 9.1e6, "inference": 212.4e6, "mmm": 38.3e6},
    },
    "fp32 trunk + int8 head": {
        "cortex-a72": {"decode": 12.6e6, "preprocess": 9.1e6, "inference": 195.5e6, "mmm": 113.4e6},
        "cortex-a76": {"decode": 12.6e6, "preprocess": 9.1e6, "inference": 190.2e6, "mmm": 105.9e6},
    },
    # 2026-12-03, Kestrel's kernels (the runtime's default): "mmm" here is every SIMD kernel's
    # instructions (Kestrel's pointwise 87.2 M, depthwise 24.4 M, stem 9.3 M, tract's matrix
    # products of the head 8.3 M), counted at the IPC of ncnn's kernels like tract's were.
    "fp32, Kestrel's kernels": {
        "cortex-a72": {"decode": 12.6e6, "preprocess": 9.2e6, "inference": 131.8e6, "mmm": 129.2e6},
        "cortex-a76": {"decode": 12.6e6, "preprocess": 9.2e6, "inference": 131.8e6, "mmm": 129.2e6},
    },
    # 2026-12-04 (session 16), board build (`--features board`: mozjpeg decode), the same method:
    # fp32 with the depthwise in column strips; "mmm" = pointwise 87.2 M + depthwise 13.8 M +
    # stem 9.3 M + the head's matrix products 8.3 M.
    "fp32, Kestrel's kernels (12-04)": {
        "cortex-a72": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 121.0e6, "mmm": 118.6e6},
        "cortex-a76": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 121.0e6, "mmm": 118.6e6},
    },
    # int8 (`--quantize all`) with Kestrel's int8 pointwise and stem: "mmm" = int8 pointwise
    # (with its quantize) + depthwise (fp32) + int8 stem + tract's int8 matrix products of the
    # head (A72: smull/sadalp 95.7 + 13.8 + 10.5 + 9.7 M; A76: sdot 50.1 + 13.8 + 10.5 + 2.3 M).
    "int8, Kestrel's kernels (12-04)": {
        "cortex-a72": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 136.8e6, "mmm": 129.7e6},
        "cortex-a76": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 86.2e6, "mmm": 76.7e6},
    },
    # 2026-12-05 (session 18): the head's int8 3x3 convolutions through Kestrel's int8 tiles (and
    # the stem too on the A76), the A72 tile's store in assembly with pre-broadcast weights.
    # "mmm" = int8 tiles with quantize (head included) + depthwise + stem + patches
    # (A72: 86.9 + 13.8 + 10.6 M; A76: 57.7 + 13.8 + 2.0 M). fp32 is unchanged (12-04 rows).
    "int8, Kestrel's kernels (12-05)": {
        "cortex-a72": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 113.8e6, "mmm": 111.3e6},
        "cortex-a76": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 75.9e6, "mmm": 73.5e6},
    },
    # The MobileNetV2 classifier (224x224, pooled, dense head), the same build and method:
    # fp32 pointwise 83.6 + depthwise 11.1 + stem 6.1 M; int8 A72 76.4 + 11.1 + 6.9 M, A76
    # 46.8 + 11.1 + 1.1 M.
    "fp32 classifier (12-05)": {
        "cortex-a72": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 104.5e6, "mmm": 100.9e6},
        "cortex-a76": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 104.3e6, "mmm": 100.9e6},
    },
    "int8 classifier (12-05)": {
        "cortex-a72": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 98.6e6, "mmm": 94.4e6},
        "cortex-a76": {"decode": 7.9e6, "preprocess": 9.1e6, "inference": 63.2e6, "mmm": 59.0e6},
    },
}
# Assumptions (docs/latency.md labels them):
# IPC of JPEG decode / resize code (integer-heavy, little SIMD): A72 1.0-1.5, A76 1.5-2.5.
OVERHEAD_IPC = {"pi4": (1.0, 1.25, 1.5), "pi5": (1.5, 2.0, 2.5)}
# Speed-up of the inference from 1 to 3 threads (low, point, high).
THREAD3 = {"fp32": (1.3, 1.45, 1.6), "int8": (1.1, 1.25, 1.4), "fp32 trunk + int8 head": (1.3, 1.45, 1.6),
           "fp32, Kestrel's kernels": (1.3, 1.45, 1.6), "fp32, Kestrel's kernels (12-04)": (1.3, 1.45, 1.6),
           "int8, Kestrel's kernels (12-04)": (1.3, 1.45, 1.6),
           "int8, Kestrel's kernels (12-05)": (1.3, 1.45, 1.6),
           "fp32 classifier (12-05)": (1.3, 1.45, 1.6), "int8 classifier (12-05)": (1.3, 1.45, 1.6)}
# Frame rate from 1 to 3 frames in flight (one core each, decode included): x86 measured 1.72-1.76x
# on 2 frames / 2 cores (0.86-0.88 per core); a Pi's memory (1 MB L2 on the Pi 4) may take more.
FLIGHT3 = (2.0, 2.4, 2.7)


def ipc(board, model):
    f = BOARDS[board][2]
    return NCNN_INSNS[(board, model)] / (NCNN_MS[(board, model)] * 1e-3 * f)


def estimate(counts):
    rows = []
    pi4_point = {}
    for board, (bname, cpu, f) in BOARDS.items():
        ipc_f, ipc_i = ipc(board, "mobilenet_v2"), ipc(board, "mobilenet_int8")
        lo, hi = min(ipc_f, ipc_i), max(ipc_f, ipc_i)
        mid = (lo + hi) / 2
        for bundle, per_cpu in counts.items():
            c = per_cpu[cpu]
            n, mmm = c["inference"], c["mmm"]
            ipc_mmm = ipc_i if bundle.startswith("int8") else ipc_f
            t1 = (mmm / ipc_mmm + (n - mmm) / mid) / f * 1e3
            t1_lo, t1_hi = n / hi / f * 1e3, n / lo / f * 1e3
            if board == "pi4":
                pi4_point[bundle] = t1
            else:  # slow end: no worse than half the Pi 4 time (the vendor's "2-3x" CPU claim)
                t1_hi = max(t1_hi, pi4_point[bundle] / 2)
            o_lo, o_mid, o_hi = OVERHEAD_IPC[board]
            ov = (c["decode"] + c["preprocess"]) / f * 1e3
            s_lo, s_mid, s_hi = THREAD3[bundle]
            rows.append(dict(board=bname, bundle=bundle, insns=n, t1=t1, t1_lo=t1_lo, t1_hi=t1_hi,
                             t3=t1 / s_mid, t3_lo=t1_lo / s_hi, t3_hi=t1_hi / s_lo,
                             ov=ov / o_mid, ov_lo=ov / o_hi, ov_hi=ov / o_lo,
                             ipc=(ipc_f, ipc_i)))
    return rows


def print_estimate(counts):
    for board in BOARDS:
        print(f"{BOARDS[board][0]}: calibrated IPC ncnn mobilenet_v2 {ipc(board, 'mobilenet_v2'):.2f}, "
              f"mobilenet_int8 {ipc(board, 'mobilenet_int8'):.2f}")
    print()
    print("| board | bundle | instr./frame | 1 thread: inference | frame (+decode, preprocess) | fps "
          "| 3 threads: inference | frame | fps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in estimate(counts):
        f1, f3 = r["t1"] + r["ov"], r["t3"] + r["ov"]
        print(f"| {r['board']} | {r['bundle']} | {r['insns'] / 1e6:.0f} M "
              f"| **{r['t1']:.0f} ms** ({r['t1_lo']:.0f}-{r['t1_hi']:.0f}) "
              f"| {f1:.0f} ms ({r['t1_lo'] + r['ov_lo']:.0f}-{r['t1_hi'] + r['ov_hi']:.0f}) "
              f"| {1e3 / f1:.1f} ({1e3 / (r['t1_hi'] + r['ov_hi']):.1f}-{1e3 / (r['t1_lo'] + r['ov_lo']):.1f}) "
              f"| **{r['t3']:.0f} ms** ({r['t3_lo']:.0f}-{r['t3_hi']:.0f}) "
              f"| {f3:.0f} ms ({r['t3_lo'] + r['ov_lo']:.0f}-{r['t3_hi'] + r['ov_hi']:.0f}) "
              f"| {1e3 / f3:.1f} ({1e3 / (r['t3_hi'] + r['ov_hi']):.1f}-{1e3 / (r['t3_lo'] + r['ov_lo']):.1f}) |")
    print()
    print("| board | bundle | 3 frames in flight (one core each): fps |")
    print("|---|---|---|")
    lo, mid, hi = FLIGHT3
    for r in estimate(counts):
        f1, f1_lo, f1_hi = r["t1"] + r["ov"], r["t1_lo"] + r["ov_lo"], r["t1_hi"] + r["ov_hi"]
        print(f"| {r['board']} | {r['bundle']} | **{mid * 1e3 / f1:.1f}** ({lo * 1e3 / f1_hi:.1f}-{hi * 1e3 / f1_lo:.1f}) |")
    print()
    for board in BOARDS:
        r = [x for x in estimate(counts) if x["board"] == BOARDS[board][0]][0]
        print(f"{BOARDS[board][0]} decode + preprocess: {r['ov']:.1f} ms ({r['ov_lo']:.1f}-{r['ov_hi']:.1f})")


# --- MACs from ONNX -------------------------------------------------------------------------------
def count_macs(path):
    import onnx
    from onnx import shape_inference

    g = shape_inference.infer_shapes(onnx.load(path)).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input) + list(g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    tot = collections.Counter()
    for n in g.node:
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes[n.input[3] if n.op_type == "QLinearConv" else n.input[1]]
            o = shapes[n.output[0]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            kind = "depthwise" if group > 1 else ("pointwise" if w[2] * w[3] == 1 else "dense 3x3")
            tot[kind] += o[1] * o[2] * o[3] * w[1] * w[2] * w[3]
        elif n.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            m = 1
            for d in a:
                m *= d
            tot["matmul"] += m * b[-1]
    return tot


# --- Instruction counting under qemu ------------------------------------------------------------
PLUGIN_C = r"""
/* Executed guest instructions per symbol (first instruction of each translation block) and how
 * many are FP/Advanced SIMD (aarch64 encodings). QEMU plugin API version 1 (QEMU 7.x). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb; struct qemu_plugin_insn;
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, int, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb_t, void *);
#define NSLOT (1 << 18)
struct slot { const char *name; uint64_t insns, simd, vaddr; };
static struct slot slots[NSLOT];
static char out_path[512] = "insn_sym.txt";
static uint64_t hash(const char *s) { uint64_t h = 5381; while (*s) h = h * 33 + (unsigned char)*s++; return h; }
static struct slot *lookup(const char *name) {
    uint64_t i = hash(name) & (NSLOT - 1);
    for (;;) {
        if (!slots[i].name) { slots[i].name = strdup(name); return &slots[i]; }
        if (!strcmp(slots[i].name, name)) return &slots[i];
        i = (i + 1) & (NSLOT - 1);
    }
}
static bool is_simd(uint32_t w) {
    if ((w & 0x0e000000) == 0x0e000000) return true;                      /* FP / ASIMD data */
    if ((w & 0x0a000000) == 0x08000000 && (w & 0x04000000)) return true;  /* ld/st, V=1 */
    return false;
}
static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb), simd = 0;
    const char *sym = qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0));
    for (size_t k = 0; k < n; k++) {
        uint32_t w; memcpy(&w, qemu_plugin_insn_data(qemu_plugin_tb_get_insn(tb, k)), 4);
        simd += is_simd(w);
    }
    uint64_t va = qemu_plugin_tb_vaddr(tb);
    char key[32];
    if (!sym) { snprintf(key, sizeof key, "?0x%llx", (unsigned long long)va); sym = key; }
    struct slot *s = lookup(sym);
    if (!s->vaddr || va < s->vaddr) s->vaddr = va;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, &s->insns, n);
    if (simd) qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, &s->simd, simd);
}
static void at_exit(qemu_plugin_id_t id, void *p) {
    FILE *f = fopen(out_path, "w");
    if (!f) return;
    for (int i = 0; i < NSLOT; i++)
        if (slots[i].name && slots[i].insns)
            fprintf(f, "%llu\t%llu\t0x%llx\t%s\n", (unsigned long long)slots[i].insns,
                    (unsigned long long)slots[i].simd, (unsigned long long)slots[i].vaddr, slots[i].name);
    fclose(f);
}
__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strncmp(argv[i], "out=", 4)) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
"""

GROUPS = [  # first match wins
    ("decode", r"decode_mcu|jsimd|decompress|ycc|huff|idct|jpeg|sep_upsample"),
    ("preprocess", r"fast_image_resize|PreprocessSpec|Copied|spec_from_iter|ndarray3zip"),
    ("mmm", r"_mmm_"),
    # Kestrel's own kernels (edge-runtime/src/kernels/), by their mangled paths.
    ("kestrel_pointwise", r"conv1x1"),
    ("kestrel_depthwise", r"Depthwise3x3|dw_"),
    ("kestrel_stem", r"Dense3x3|dense_"),
]


def symbols(binary):
    out = subprocess.run(["aarch64-linux-gnu-nm", "-n", "--defined-only", binary],
                         capture_output=True, text=True, check=True).stdout
    addrs, names, first = [], [], {}
    for line in out.splitlines():
        p = line.split(" ", 2)
        if len(p) < 3 or p[1] in "NnUw":
            continue
        a = int(p[0], 16)
        addrs.append(a)
        names.append(p[2])
        first.setdefault(p[2], a)
    return addrs, names, first


def per_symbol(path, syms):
    addrs, names, first = syms
    raw = []
    for line in open(path):
        i, s, va, name = line.rstrip("\n").split("\t", 3)
        raw.append((name, int(i), int(s), int(va, 16)))
    # load base of a PIE: the most common offset between a TB's address and its symbol's
    deltas = collections.Counter(va - first[n] for n, _, _, va in raw if n in first)
    base = deltas.most_common(1)[0][0] if deltas else 0
    out = collections.defaultdict(lambda: [0, 0])
    for name, i, s, va in raw:
        if name.startswith("?"):  # qemu resolves typed symbols only: asm kernels come back bare
            k = bisect.bisect_right(addrs, va - base) - 1
            while k > 0 and names[k][0] in ".$":  # local labels inside an asm kernel
                k -= 1
            name = names[k] if k >= 0 and 0 <= va - base < addrs[-1] + 0x100000 else "[shared libs]"
        out[name][0] += i
        out[name][1] += s
    return out


def count(args):
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    binary = cmd[0]
    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "insn_sym.so")
        with open(os.path.join(tmp, "insn_sym.c"), "w") as f:
            f.write(PLUGIN_C)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so, os.path.join(tmp, "insn_sym.c")], check=True)
        syms = symbols(binary)
        runs = []
        for n in (args.n1, args.n2):
            out = os.path.join(tmp, f"n{n}.txt")
            argv = ["qemu-aarch64", "-cpu", args.cpu, "-L", args.sysroot, "-plugin", f"{so},out={out}"]
            argv += [a.replace("{N}", str(n)) for a in cmd]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            runs.append(per_symbol(out, syms))
    dn = args.n2 - args.n1
    per = {n: ((runs[1][n][0] - runs[0][n][0]) / dn, (runs[1][n][1] - runs[0][n][1]) / dn)
           for n in set(runs[0]) | set(runs[1])}
    groups = collections.Counter()
    for name, (i, _) in per.items():
        g = next((g for g, p in GROUPS if re.search(p, name)), "other")
        groups[g] += i
    total = sum(i for i, _ in per.values())
    result = {"cpu": args.cpu, "total": total, "simd": sum(s for _, s in per.values()),
              "decode": groups["decode"], "preprocess": groups["preprocess"], "mmm": groups["mmm"],
              "kestrel_pointwise": groups["kestrel_pointwise"],
              "kestrel_depthwise": groups["kestrel_depthwise"], "kestrel_stem": groups["kestrel_stem"],
              "inference": total - groups["decode"] - groups["preprocess"],
              "top": [f"{i / 1e6:.1f} M {n}" for i, n in
                      sorted(((i, n) for n, (i, _) in per.items()), reverse=True)[:args.top]]}
    print(json.dumps(result, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="sub", required=True)
    m = sub.add_parser("macs")
    m.add_argument("bundles", nargs="+")
    c = sub.add_parser("count")
    c.add_argument("--cpu", default="cortex-a72", help="qemu -cpu (cortex-a72 = Pi 4, cortex-a76 = Pi 5)")
    c.add_argument("--n1", type=int, default=1)
    c.add_argument("--n2", type=int, default=6)
    c.add_argument("--sysroot", default="/usr/aarch64-linux-gnu")
    c.add_argument("--top", type=int, default=15)
    c.add_argument("cmd", nargs=argparse.REMAINDER)
    e = sub.add_parser("estimate")
    e.add_argument("--counts", help="JSON shaped like KESTREL_INSNS (default: the doc's measurements)")
    a = ap.parse_args()
    if a.sub == "macs":
        for b in a.bundles:
            for f in ("trunk", "head", "model"):
                p = os.path.join(b, f + ".onnx")
                if os.path.exists(p):
                    t = count_macs(p)
                    print(f"{p}: {sum(t.values()) / 1e6:.1f} M MACs "
                          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in sorted(t.items())))
    elif a.sub == "count":
        count(a)
    else:
        print_estimate(json.load(open(a.counts)) if a.counts else KESTREL_INSNS)


if __name__ == "__main__":
    sys.exit(main())
