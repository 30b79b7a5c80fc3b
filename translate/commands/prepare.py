"""Prepare a corpus ahead of training: `translate prepare [data=…]` (make prepare).

Trains (or finds) the tokenizer and encodes the training split into its memory-mapped token store on all
cores, with progress bars; `make train` with the same data then starts from both at once.  It takes the
same overrides as `make train` (the data.* ones matter).
"""

import time

import hydra
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.data.pipeline import prepare_data
from translate.runtime.errors import one_line_errors

register_configs()


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="prepare")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    started = time.perf_counter()
    data = prepare_data(cfg.data)
    store, meta = data.store, data.store.meta
    print(f"tokenizer  {data.tokenizer.model_file} ({len(data.tokenizer):,} pieces)")
    print(
        f"store      {store.directory}: {len(store):,} pairs, {meta['src_tokens']:,} + {meta['tgt_tokens']:,} "
        f"tokens, {store.disk_bytes() / 1e6:.1f} MB"
    )
    print(
        f"dropped    {meta['dropped_empty']:,} of {meta['read']:,} pairs with an empty side, "
        f"{meta['dropped_long']:,} over data.max_tokens={meta['max_tokens']}"
    )
    print(f"ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
