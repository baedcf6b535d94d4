"""Rule-based rewards: math (math-verify), code (a real sandbox), multiple choice / exact match, and format.

Each reward is a pure function of one record's text fields; `factory.verify.verdicts.score_record` picks the one a record's
domain needs. Submodules are imported on use so that the sandbox child and light users stay cheap.
"""
