"""bert-squad-export: turn a MindSpore model zoo checkpoint or a Hugging Face BERT
question-answering folder into a MindSpore Serving version folder.

The thin command of the export tool; its code is the library's bert_squad.export."""
