"""Fine-tuning: SFT, continued pretraining and DPO with full / LoRA / QLoRA (imports no server stack)."""
