"""The `minicpm` command: `app.py` registers one module per verb (convert, quantize, eval_ppl, chat,
inspect_verb) with `app.command()(…)`; verbs never import `app`. `ui.py`: tables, bars, JSON."""
