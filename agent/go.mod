module procurator/agent

go 1.19
