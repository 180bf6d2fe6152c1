"""The built-in task suite: importing this package registers every task with ``modprompt.data.task``.

One module per source repository. Roles follow the last section of the data mirror's TASKS.md: 8
downstream tasks (FewCLUE eprstmt, bustm, ocnli, csldcp, tnews, iflytek, chid, and chnsenticorp) and 35
upstream task formulations. The full OCNLI and TNEWS releases and CSL ``cls_dcp`` contain downstream test
data and are not registered. Shared conversion and cleaning rules are in :mod:`.convert`.
"""

from modprompt.data.builtin import cblue, ccpm, cmrc, csl, csts, fewclue, nre, sentiment, thucnews  # noqa: F401

#: the built-in downstream tasks, whose every split is kept out of pre-training (``modprompt.data.leakage``)
DOWNSTREAM_TASKS = ("eprstmt", "bustm", "ocnli", "csldcp", "tnews", "iflytek", "chid", "chnsenticorp")
