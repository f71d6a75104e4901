"""Fine-tuning for SQuAD v1.1 extractive QA with MindSpore (bert-squad-finetune)."""
