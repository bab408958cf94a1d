"""onnxruntime latency on a bundle's model.onnx, the peer of `kestrel-edge bench`.

Usage: ort_latency.py MODEL THREADS ITERATIONS. Same input shape as the bundle (batch 1), the given
number of intra-op threads, one inter-op thread, full graph optimisation. Prints one JSON line.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, threads, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
t = time.perf_counter()
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - t) * 1e3
inp = sess.get_inputs()[0]
shape = [1 if not isinstance(d, int) else d for d in inp.shape]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
times = []
for i in range(iterations + 5):
    t = time.perf_counter()
    sess.run(None, {inp.name: x})
    if i >= 5:
        times.append((time.perf_counter() - t) * 1e3)
times.sort()
def pct(q):
    import math
    return times[min(len(times), max(1, math.ceil(q * len(times)))) - 1]
print(json.dumps({"version": ort.__version__, "load_ms": load_ms, "p50_ms": pct(0.5), "p95_ms": pct(0.95)}))
