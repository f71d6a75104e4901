"""The serve command (Python 3.10+): its options, its lifecycle, the supervision of Serving's masters and the switch
between model versions. Its public ports are bert_squad.front's; Serving itself runs on Python 3.9 in
bert_squad.serving, started as child processes (serving_python.py) and reached only through the internal unix socket."""
