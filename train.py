"""Train, validate, test or predict: `python train.py fit --config configs/demo.yaml`."""

import sys

from vision_attn.lightning_cli import USER_ERRORS, main

if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:  # bad data or a damaged checkpoint: one line naming the file, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
