-- wrk script: the bench's chat request as a Responses API request (POST /v1/responses);
-- prints one RESULT line like ../shared/bench/chat.lua. env: AUTH (bearer token), LABEL
local auth  = os.getenv("AUTH")
local label = os.getenv("LABEL") or "responses"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
wrk.body = '{"model":"gpt-mock","instructions":"You are terse.",'
        .. '"input":"Say hello in five words.","max_output_tokens":16,"temperature":0}'

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT label=%s requests=%d rps=%.1f p50=%.2f p99=%.2f non2xx=%d\n",
    label, summary.requests, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, e.status))
end
