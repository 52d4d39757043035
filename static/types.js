// @ts-check
// The shapes the dashboard reads from the API (types only: nothing here runs). The
// OpenAPI document at /api/v1/openapi.json is the contract; these name what the views use.

/**
 * @typedef {"queued" | "running" | "succeeded" | "failed" | "cancelled" | "diverged" | "interrupted"} JobStatus
 *
 * @typedef {object} Issue An issue of the server's diagnosis, in force now.
 * @property {string} kind
 * @property {number} [layer]
 * @property {number} since
 * @property {string} message
 *
 * @typedef {object} Diagnosis The server's diagnosis of a run.
 * @property {string} status `healthy`, `warning` or `critical`.
 * @property {Issue[]} issues
 *
 * @typedef {Record<string, any>} JobSpec The job's spec, as submitted (with defaults filled in).
 *
 * @typedef {object} Job
 * @property {string} id
 * @property {string} name
 * @property {JobStatus} status
 * @property {JobSpec} spec
 * @property {string} created_at
 * @property {string | null} [started_at]
 * @property {string | null} [finished_at]
 * @property {number} step
 * @property {number} total_steps
 * @property {string | null} [device]
 * @property {number | null} [loss]
 * @property {string | null} [error]
 * @property {Diagnosis | null} [diagnosis]
 * @property {number | null} [resumed_from]
 * @property {string} [experiment_id] The experiment the job belongs to.
 * @property {number} [cell] Its cell in that experiment.
 *
 * @typedef {object} Layer One named parameter tensor.
 * @property {number} index
 * @property {string} name
 * @property {number[]} [shape]
 * @property {number} [numel]
 *
 * @typedef {object} JobEvent An event of the diagnosis (or a validation pass).
 * @property {number} step
 * @property {string} kind
 * @property {number | null} [layer]
 * @property {number | null} [value]
 * @property {string} message
 *
 * @typedef {object} EvalColumns Validation passes as columns.
 * @property {number[]} step
 * @property {(number | null)[]} loss
 * @property {string} [metric]
 * @property {(number | null)[]} [value]
 *
 * @typedef {object} StepsResponse `GET /jobs/{id}/steps`.
 * @property {number[]} step
 * @property {(number | null)[]} loss
 * @property {(number | null)[]} grad_norm
 * @property {(number | null)[]} grad_norm_clipped
 * @property {(number | null)[]} clip_coef
 * @property {number[]} lr
 * @property {boolean[]} skipped
 * @property {EvalColumns} [eval]
 *
 * @typedef {{index: number, name: string, step: number[]} & Record<string, any>} LayerSeries
 *   One layer's statistics over steps, one array per statistic asked for.
 *
 * @typedef {Record<string, (number | null)[]> & {hist?: number[][]}} LayerStats
 *   One step's per-layer statistics: an array over layers per statistic name.
 *
 * @typedef {object} StepMessage
 * @property {"step"} type
 * @property {number} step
 * @property {number | null} loss
 * @property {number | null} grad_norm
 * @property {number | null} grad_norm_clipped
 * @property {number | null} clip_coef
 * @property {number} lr
 * @property {boolean} skipped
 * @property {LayerStats} [layers]
 *
 * @typedef {object} HelloMessage
 * @property {"hello"} type
 * @property {Job} job
 * @property {Layer[]} layers
 * @property {string[]} statistics The per-layer statistics a step's `layers` holds, in order.
 * @property {number[]} histogram_edges Lower edges of the power-of-two histogram buckets.
 *
 * @typedef {HelloMessage | StepMessage
 *   | ({type: "event"} & JobEvent)
 *   | {type: "lagged", missed: number}
 *   | {type: "status", status: JobStatus, error?: string | null}
 *   | {type: "error", message: string}} ServerMessage
 *
 * @typedef {object} ViewContext What the shell gives every view.
 * @property {(message: string) => void} toast
 * @property {(err: unknown) => void} offline
 *
 * @typedef {() => void} Teardown
 */

export {};
