"""Checkpoint -> servable version folder (the bert-squad-export command, the serve command's export on first start,
bert-squad-finetune --export). Imports MindSpore: never imported by the servable or the client."""
