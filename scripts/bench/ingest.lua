-- wrk script for the webhook ingest figure in docs/performance.md: posts one signed
-- workflow_job body with a fresh X-GitHub-Delivery per request (a repeated id would be
-- answered 200 as a duplicate and not measure durable ingest).
--   INGEST_BODY       path of the JSON body
--   INGEST_SIGNATURE  "sha256=<hex>" of the body with the receiver's secret, e.g.
--                     sha256=$(openssl dgst -sha256 -hmac "$SECRET" "$INGEST_BODY" | awk '{print $2}')
local f = assert(io.open(os.getenv("INGEST_BODY"), "rb"))
local body = f:read("*all")
f:close()
local signature = assert(os.getenv("INGEST_SIGNATURE"), "INGEST_SIGNATURE is not set")
local counter = 0
local prefix = ""

function init(args)
  -- A distinct prefix per thread and per run: table addresses differ between thread states.
  local addr = tostring({}):gsub("table: ", "")
  math.randomseed(os.time())
  prefix = os.time() .. "-" .. addr .. "-" .. math.random(1, 1000000000)
end

function request()
  counter = counter + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["X-GitHub-Event"] = "workflow_job"
  headers["X-GitHub-Delivery"] = "wrk-" .. prefix .. "-" .. counter
  headers["X-Hub-Signature-256"] = signature
  return wrk.format("POST", "/webhooks/github", headers, body)
end
