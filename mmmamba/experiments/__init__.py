"""The paper's experiments on one teacher: the ablation grid (``ablations``), its tables and chart
(``report``), and the probes behind the findings (``stage3_start``, ``layer_errors``, ``patch_scale``,
``answer_breakdown``, ``answer_prompts``)."""
