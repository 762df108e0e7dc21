"""The playground: prompts tried on a completed job's tuned model beside its base.

`runs` (submit, claim, finish, fail, reap), `cache` (loaded models and fetched folders on a
worker), `generation` (torch: worker only), `views` (the pages).
"""
