"""The built-in task suite: importing this package registers every task with ``modprompt.data.task``.

One module per source repository. Roles follow the last section of the data mirror's TASKS.md: 8
downstream tasks (FewCLUE eprstmt, bustm, ocnli, csldcp, tnews, iflytek, chid, and chnsenticorp) and 35
upstream task formulations. The full OCNLI and TNEWS releases and CSL ``cls_dcp`` contain downstream test
data and are not registered. Shared conversion and cleaning rules are in :mod:`modprompt.data.convert`; which
tasks are downstream is each task's ``role``.
"""

from modprompt.data.builtin import cblue, ccpm, cmrc, csl, csts, fewclue, nre, sentiment, thucnews  # noqa: F401
