"""Evaluation: sacreBLEU metrics and BLEU by length, validation of a model on pairs, scoring a run
(`make eval`), plots, the comparison report and its spread over seeds.  It reads models and results,
never trains."""
