"""bert-squad-export: turn a MindSpore model zoo checkpoint or a Hugging Face BERT
question-answering folder into a MindSpore Serving version folder."""
