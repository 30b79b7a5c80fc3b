"""Decoding: search (greedy, beam) over any model's decoding interface, the inference API (load a run,
translate texts) and the CTranslate2 export and engine."""
