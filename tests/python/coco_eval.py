"""pycocotools' COCOeval (bbox) on a COCO ground-truth file and a COCO results file.

Usage: coco_eval.py GT.json RESULTS.json
Prints one JSON object: map50_95, map50, map75 (COCO stats[0..3] with maxDets [1, 10, 100]) and,
per category in GT order, ap50 and ap50_95 (-1 for a category without ground truth).
pycocotools' own progress output goes to stderr so stdout is only the JSON.
"""

import contextlib
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def main():
    gt_path, res_path = sys.argv[1], sys.argv[2]
    with contextlib.redirect_stdout(sys.stderr):
        gt = COCO(gt_path)
        with open(res_path) as f:
            results = json.load(f)
        if not results:
            sys.exit("coco_eval.py: empty results file (pycocotools cannot load it)")
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [T, R, K, A, M]; area "all" is index 0, maxDets 100 is the last.
    p = ev.eval["precision"][:, :, :, 0, -1]
    per_class = []
    for k, cat in enumerate(ev.params.catIds):
        pk = p[:, :, k]
        has_gt = bool((pk > -1).all())
        per_class.append(
            {
                "category_id": int(cat),
                "ap50": float(np.mean(pk[0])) if has_gt else -1.0,
                "ap50_95": float(np.mean(pk)) if has_gt else -1.0,
            }
        )
    print(
        json.dumps(
            {
                "map50_95": float(ev.stats[0]),
                "map50": float(ev.stats[1]),
                "map75": float(ev.stats[2]),
                "per_class": per_class,
            }
        )
    )


if __name__ == "__main__":
    main()
