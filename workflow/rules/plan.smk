# The resource plan (saeflow.models.plan): tokens, bytes of every activation store and SAE, and
# FLOP-based GPU hours of the configured runs, logged in one line whenever the workflow is parsed
# by the main process (so `snakemake -n` shows it too), written whole by `snakemake resource_plan`,
# and checked against the disk budget before the first job runs (onstart: a dry run only warns).
if workflow.is_main_process:
    from saeflow.models.plan import check_budget, disk_budget, resource_plan, summary_line

    PLAN, PLAN_TOTALS = resource_plan(config)
    PLAN_BUDGET = disk_budget(config)
    logger.info(summary_line(PLAN_TOTALS, PLAN_BUDGET))
    if PLAN_TOTALS["peak_bytes"] > PLAN_BUDGET[0]:
        logger.warning("resource plan: over the disk budget; a real run will refuse to start")

    onstart:
        if config["plan"]["check"]:
            check_budget(PLAN, PLAN_TOTALS, PLAN_BUDGET)


rule resource_plan:
    output:
        "results/resource_plan.tsv",
    log:
        "logs/resource_plan.log",
    conda:
        "../../envs/cells.yaml"
    script:
        "../../scripts/resource_plan.py"
