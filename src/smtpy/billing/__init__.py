"""Plans, limits, message quotas and Stripe billing (optional: off without plans or a key).

    plans.py    the configured plans (`Catalog`), an organization's effective plan and
                limits, its usage, `check_limit` (raises `PlanLimit`), the operator's
                overrides
    quota.py    the monthly message quota of `smtpy serve`: counts added in batches,
                the organizations' quota states, the 80 % and 100 % notices
    stripe.py   Checkout and Customer Portal sessions, the signed webhook, `sync`

Layers: below `smtpy.admin` (whose create paths call `check_limit`), above
`smtpy.accounts` (members, the mailer, the audit log).
"""
