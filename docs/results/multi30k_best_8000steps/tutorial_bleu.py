"""BLEU as the pytorch-seq2seq tutorial measures it: lower-cased spaCy tokens, corpus BLEU-4, no smoothing.

    pip install spacy sacrebleu   # a separate venv: spaCy is no dependency of translate
    python tutorial_bleu.py REF.en.gz HYP [HYP ...]

spaCy's blank English tokenizer (the tokenizer its en_core_web_sm pipeline uses; no model download),
then sacreBLEU with tokenize=none, which is the tutorial's torchtext bleu_score on token lists.
"""

import gzip
import sys

import sacrebleu
import spacy

tokenizer = spacy.blank("en").tokenizer


def tokens(lines):
    return [" ".join(t.text for t in tokenizer(line.strip().lower())) for line in lines]


refs = tokens(gzip.open(sys.argv[1], "rt", encoding="utf-8"))
for hyp in sys.argv[2:]:
    bleu = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
    score = bleu.corpus_score(tokens(open(hyp, encoding="utf-8")), [refs])
    print(f"{hyp}: {score}  {bleu.get_signature()}  (spaCy {spacy.__version__})")
