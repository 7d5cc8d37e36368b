"""One lab directory: lab.yaml (`settings` table, typed `model`, `validate`, loaded by `config`; written by
`labfile` for `lab init`), the `plan` of machines, the `.lab/` `state`, discovery `tokens` and `render`."""
