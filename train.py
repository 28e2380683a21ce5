"""Train, validate, test or predict: `python train.py fit --config configs/demo.yaml`."""

from vision_attn.lightning_cli import main

if __name__ == "__main__":
    main()
