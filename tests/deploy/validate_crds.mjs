// Validates rendered Prometheus Operator objects with the operator's own generated validators (patterns,
// enums, required fields). Reads a JSON array of manifests from the file in argv[2]; prints one line per object;
// exits 1 if any is invalid or of an unknown kind.
import { readFileSync } from "node:fs";

const kinds = {
  ServiceMonitor: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  PrometheusRule: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};
let failed = 0;
for (const doc of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const module = kinds[doc.kind];
  if (!module) {
    console.log(`UNKNOWN ${doc.kind}`);
    failed++;
    continue;
  }
  const Model = (await import(module))[doc.kind];
  try {
    new Model(doc).validate();
    console.log(`VALID ${doc.kind}/${doc.metadata.name}`);
  } catch (err) {
    console.log(`INVALID ${doc.kind}/${doc.metadata.name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
