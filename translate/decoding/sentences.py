"""A paragraph into sentences, for translating it one sentence at a time (`make translate`, the server).

    split_into_sentences("Ein Hund läuft. Eine Katze schläft.", "de")  ->  ["Ein Hund läuft.", "Eine Katze schläft."]

The splitter is sentencex (Wikimedia, MIT licence): rule-based, with the rules of some 300 languages compiled
into the package (Multi30k's en, de, fr and cs among them, each with its own abbreviations: "z.B.", "tj.",
"3. Mai" do not end a sentence), nothing read or downloaded at run time; a language it has no rules for falls
back to its general rules.  It errs on the side of not splitting, which only leaves a sentence longer.
"""

from sentencex import segment


def split_into_sentences(text: str, language: str) -> list[str]:
    """The sentences of `text` by the rules of `language` (an ISO 639 code such as "de"), stripped and in
    order; none for a blank text."""
    return [sentence.strip() for sentence in segment(language, text) if sentence.strip()]
