"""Trust audits: the cohort (:mod:`.data`), the trained model (:mod:`.membership`, :mod:`.robustness`,
:mod:`.backdoor`, :mod:`.model`) and their records on disk (:mod:`.report`)."""
