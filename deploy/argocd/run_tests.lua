-- Runs health.lua against every case of health_test.yaml (converted to JSON by test.sh), the way
-- Argo CD does: the object in the global `obj`, the script's return value the health.
local cjson = require("cjson")
local dir = arg[1]
local cases = cjson.decode(io.read("*a"))
local failed = 0
-- ARGOCD_STATUS_ONLY=1: compare the status only (objects whose messages carry live values)
local status_only = os.getenv("ARGOCD_STATUS_ONLY") == "1"
for _, case in ipairs(cases) do
  obj = case.obj
  local script = assert(loadfile(dir .. "/health.lua"))
  local ok, hs = pcall(script)
  local want = case.want
  if not ok then
    failed = failed + 1
    print("FAIL " .. case.path .. ": " .. tostring(hs))
  elseif hs.status ~= want.status or (not status_only and hs.message ~= want.message) then
    failed = failed + 1
    print(string.format("FAIL %s: got %s %q, want %s %q", case.path, tostring(hs.status),
      tostring(hs.message), tostring(want.status), tostring(want.message)))
  else
    print("ok   " .. case.path .. ": " .. hs.status .. " (" .. tostring(hs.message) .. ")")
  end
end
print(string.format("argocd health: %d passed, %d failed", #cases - failed, failed))
os.exit(failed == 0 and 0 or 1)
