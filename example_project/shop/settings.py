"""Settings of the demo shop project: a plain Scrapy project plus the checkpoint add-on."""

BOT_NAME = "shop"

SPIDER_MODULES = ["shop.spiders"]
NEWSPIDER_MODULE = "shop.spiders"

ROBOTSTXT_OBEY = False
CONCURRENT_REQUESTS = 16
TELNETCONSOLE_ENABLED = False
# Scrapy 2.19's remote-control server writes a job file (with its auth token) under the
# user's state directory and deletes it on a clean stop only: every SIGKILL of the demo
# would leave one behind.
REMOTE_CONTROL_ENABLED = False
LOG_LEVEL = "INFO"

# The add-on wires in the checkpoint extension and middlewares; CHECKPOINT_ENABLED turns
# them on. Resume a killed crawl with: scrapy crawl products -s CHECKPOINT_RESUME=1
ADDONS = {"scrapy_checkpoint.Addon": 100}
CHECKPOINT_ENABLED = True
# Items go out through Scrapy's own feed exports, which the add-on makes exactly once
# across kills: scrapy crawl products -O items.jsonl  (then -s CHECKPOINT_RESUME=1)
