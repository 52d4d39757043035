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
 * @property {string | null} [node_id] The node that runs it, or ran it last.
 * @property {number} [attempts] How many times it has started.
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
 * @property {(number | null)[]} [loss_scale] fp16's loss scale at each step (null without loss scaling).
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
 * @property {number} [loss_scale] fp16's loss scale the step ran at, when the job scales its loss.
 * @property {boolean} [overflow] The scaled gradients overflowed: update skipped, scale backed off.
 * @property {LayerStats} [layers]
 * @property {(number | null)[]} [spectral] Each measured matrix's largest singular value (`hello.matrices` order).
 * @property {(number | null)[]} [time_profile] Per input position t, the norm of the gradient of the loss at the embedded input x_t, averaged over the batch.
 * @property {{mean: (number | null)[], rms: (number | null)[]}} [signal] Each block output's mean and RMS (`hello.blocks` order).
 *
 * @typedef {object} MatrixInfo A weight matrix whose spectral radius a job measures.
 * @property {number} index
 * @property {string} name `lstm.weight_hh_l0[f]`: the layer, and the gate for a block of one.
 * @property {number} layer
 * @property {number} side
 *
 * @typedef {object} SpectralResponse
 * @property {MatrixInfo[]} matrices
 * @property {number[]} step
 * @property {(number | null)[][]} radius Per matrix, one value per step.
 *
 * @typedef {object} TimeProfileResponse
 * @property {number} positions
 * @property {number[]} step
 * @property {(number | null)[][]} grad Per step, one value per position.
 * @property {(number | null)[]} first_last_ratio
 *
 * @typedef {object} SignalResponse
 * @property {string[]} blocks
 * @property {number[]} step
 * @property {(number | null)[][]} mean Per block, one value per step.
 * @property {(number | null)[][]} rms
 *
 * @typedef {object} HelloMessage
 * @property {"hello"} type
 * @property {Job} job
 * @property {Layer[]} layers
 * @property {string[]} statistics The per-layer statistics a step's `layers` holds, in order.
 * @property {number[]} histogram_edges Lower edges of the power-of-two histogram buckets.
 * @property {MatrixInfo[]} [matrices] The matrices a step's `spectral` measures, in order.
 * @property {string[]} [blocks] The blocks a recorded step's `signal` describes, in order.
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
 * @property {() => void} reload Builds the page again (after an action that changes what it shows).
 *
 * @typedef {() => void} Teardown
 */

export {};
