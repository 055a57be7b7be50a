package jupyter

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// FeatureSubshells is the supported_features entry of kernels that offer
// subshells (ipykernel >= 7).
const FeatureSubshells = "kernel subshells"

// KernelInfo is the content of a kernel_info_reply.
type KernelInfo struct {
	ProtocolVersion       string `json:"protocol_version"`
	Implementation        string `json:"implementation"`
	ImplementationVersion string `json:"implementation_version"`
	Status                string `json:"status"`
	LanguageInfo          struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"language_info"`
	SupportedFeatures []string `json:"supported_features"`
}

// Supports reports whether supported_features lists feature.
func (k *KernelInfo) Supports(feature string) bool {
	return slices.Contains(k.SupportedFeatures, feature)
}

// KernelInfo asks the kernel on shell who it is.
func (c *Client) KernelInfo(ctx context.Context) (*KernelInfo, error) {
	return c.kernelInfo(ctx, Shell)
}

// KernelInfoOn is KernelInfo on a channel of choice: on Control, ipykernel
// >= 6 answers while a cell runs on shell; kernels whose control channel
// only handles shutdown (IRkernel) do not answer there at all.
func (c *Client) KernelInfoOn(ctx context.Context, ch Channel) (*KernelInfo, error) {
	return c.kernelInfo(ctx, ch)
}

func (c *Client) kernelInfo(ctx context.Context, ch Channel) (*KernelInfo, error) {
	r, err := c.Request(ctx, ch, "kernel_info_request", nil, nil)
	if err != nil {
		return nil, err
	}
	var ki KernelInfo
	if err := json.Unmarshal(r.Content, &ki); err != nil {
		return nil, fmt.Errorf("%w: kernel_info_reply: %w", ErrMalformed, err)
	}
	c.mu.Lock()
	c.kinfo = &ki
	c.mu.Unlock()
	return &ki, nil
}

// Ready waits until the kernel answers a kernel_info_request on shell and
// the client has seen that request's status on iopub, so that iopub output
// of later requests will not be missed (a SUB socket receives nothing until
// its subscription has reached the publisher). It tries again every
// attempt until ctx ends. This is what jupyter_client's wait_for_ready does.
func (c *Client) Ready(ctx context.Context) error {
	const attempt = time.Second
	var last error
	for {
		if err := ctx.Err(); err != nil {
			if last != nil {
				return fmt.Errorf("jupyter: waiting for kernel: %w (last attempt: %w)", err, last)
			}
			return fmt.Errorf("jupyter: waiting for kernel: %w", err)
		}
		last = c.readyOnce(ctx, attempt)
		if last == nil {
			return nil
		}
		if cerr := c.Err(); cerr != nil {
			return cerr
		}
	}
}

func (c *Client) readyOnce(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	m, err := NewMessage(c.session, "kernel_info_request", nil, nil)
	if err != nil {
		return err
	}
	w := newWatcher()
	defer c.unwatch(m.Header.MsgID)
	if _, err := c.roundTrip(ctx, Shell, m, w); err != nil {
		return err
	}
	for {
		if len(w.take()) > 0 {
			return nil
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return fmt.Errorf("no iopub status for kernel_info_request: %w", ctx.Err())
		case <-c.done:
			return c.Err()
		}
	}
}

// ExecuteOptions are the fields of an execute_request besides the code.
// The zero value is a visible execution that neither stores history nor
// stops the queue on error; see [SilentOptions] for a re-seed.
type ExecuteOptions struct {
	Silent          bool
	StoreHistory    bool
	AllowStdin      bool
	StopOnError     bool
	UserExpressions map[string]string // nil is sent as {}
	// SubshellID, when set, is written in the header (ipykernel >= 7).
	SubshellID string
}

// SilentOptions are the options of a re-seed: silent, no history, no
// stdin, do not abort queued cells on error. Such an execution changes no
// execution_count and no history (printed output is still published).
func SilentOptions() ExecuteOptions {
	return ExecuteOptions{Silent: true}
}

// ExecuteReply is the content of an execute_reply.
type ExecuteReply struct {
	Status          string                     `json:"status"` // "ok", "error" or "aborted"
	ExecutionCount  int                        `json:"execution_count"`
	EName           string                     `json:"ename"`
	EValue          string                     `json:"evalue"`
	Traceback       []string                   `json:"traceback"`
	UserExpressions map[string]json.RawMessage `json:"user_expressions"`
}

// ExecError is the error of an execute_reply whose status is not "ok". Its
// message names the exception class only: the exception value can hold
// data (such as a secret) that must not reach logs. EValue has it.
type ExecError struct {
	Status, EName, EValue string
}

func (e *ExecError) Error() string {
	if e.EName == "" {
		return "jupyter: execution " + e.Status
	}
	return "jupyter: execution " + e.Status + ": " + e.EName
}

// Err returns nil when the status is "ok", else an *ExecError.
func (r *ExecuteReply) Err() error {
	if r.Status == "ok" {
		return nil
	}
	return &ExecError{Status: r.Status, EName: r.EName, EValue: r.EValue}
}

type executeRequest struct {
	Code            string            `json:"code"`
	Silent          bool              `json:"silent"`
	StoreHistory    bool              `json:"store_history"`
	UserExpressions map[string]string `json:"user_expressions"`
	AllowStdin      bool              `json:"allow_stdin"`
	StopOnError     bool              `json:"stop_on_error"`
}

func executeContent(code string, opts ExecuteOptions) executeRequest {
	ue := opts.UserExpressions
	if ue == nil {
		ue = map[string]string{}
	}
	return executeRequest{
		Code:            code,
		Silent:          opts.Silent,
		StoreHistory:    opts.StoreHistory,
		UserExpressions: ue,
		AllowStdin:      opts.AllowStdin,
		StopOnError:     opts.StopOnError,
	}
}

func decodeExecuteReply(m *Message) (*ExecuteReply, error) {
	if m.Header.MsgType != "execute_reply" {
		return nil, fmt.Errorf("%w: got %s for an execute_request", ErrMalformed, m.Header.MsgType)
	}
	var r ExecuteReply
	if err := json.Unmarshal(m.Content, &r); err != nil {
		return nil, fmt.Errorf("%w: execute_reply: %w", ErrMalformed, err)
	}
	return &r, nil
}

// Execute sends an execute_request on ch (Shell, or Control for a re-seed
// beside a running cell) and returns the reply. A reply whose status is not
// "ok" is returned without error: see [ExecuteReply.Err].
func (c *Client) Execute(ctx context.Context, ch Channel, code string, opts ExecuteOptions) (*ExecuteReply, error) {
	var header func(*Header)
	if opts.SubshellID != "" {
		header = func(h *Header) { h.SubshellID = opts.SubshellID }
	}
	m, err := c.Request(ctx, ch, "execute_request", executeContent(code, opts), header)
	if err != nil {
		return nil, err
	}
	return decodeExecuteReply(m)
}

// CreateSubshell asks the kernel on control for a new subshell and returns
// its id. It fails with ErrUnsupported, without sending anything, when the
// kernel's kernel_info does not list "kernel subshells" (ipykernel < 7,
// which would not reply at all). kernel_info is asked on control and
// remembered.
func (c *Client) CreateSubshell(ctx context.Context) (string, error) {
	c.mu.Lock()
	ki := c.kinfo
	c.mu.Unlock()
	if ki == nil {
		var err error
		if ki, err = c.kernelInfo(ctx, Control); err != nil {
			return "", fmt.Errorf("jupyter: create subshell: %w", err)
		}
	}
	if !ki.Supports(FeatureSubshells) {
		return "", fmt.Errorf("%w: subshells (%s %s does not list %q)", ErrUnsupported, ki.Implementation, ki.ImplementationVersion, FeatureSubshells)
	}
	r, err := c.Request(ctx, Control, "create_subshell_request", nil, nil)
	if err != nil {
		return "", fmt.Errorf("jupyter: create subshell: %w", err)
	}
	var reply struct {
		Status     string `json:"status"`
		SubshellID string `json:"subshell_id"`
		EName      string `json:"ename"`
	}
	if err := json.Unmarshal(r.Content, &reply); err != nil {
		return "", fmt.Errorf("%w: create_subshell_reply: %w", ErrMalformed, err)
	}
	if (reply.Status != "" && reply.Status != "ok") || reply.SubshellID == "" {
		return "", fmt.Errorf("jupyter: create subshell: status %q %s", reply.Status, reply.EName)
	}
	return reply.SubshellID, nil
}

// RunResult is what a cell run with [Client.Run] produced.
type RunResult struct {
	Stdout, Stderr string
	Reply          *ExecuteReply
	// Outputs are the iopub messages of types stream, display_data,
	// update_display_data, execute_result, error and clear_output whose
	// parent is the request, in order.
	Outputs []*Message
}

// Run executes code on shell as a frontend runs a cell (not silent, stored
// in history, stopping queued cells on error) and collects its output: it
// returns when both the execute_reply and the iopub status "idle" for the
// request have arrived. Call [Client.Ready] once first so the iopub
// subscription is live. A reply with status "error" is not an error of Run.
func (c *Client) Run(ctx context.Context, code string) (*RunResult, error) {
	m, err := NewMessage(c.session, "execute_request",
		executeContent(code, ExecuteOptions{StoreHistory: true, StopOnError: true}), nil)
	if err != nil {
		return nil, err
	}
	w := newWatcher()
	defer c.unwatch(m.Header.MsgID)
	rm, err := c.roundTrip(ctx, Shell, m, w)
	if err != nil {
		return nil, err
	}
	res := &RunResult{}
	if res.Reply, err = decodeExecuteReply(rm); err != nil {
		return nil, err
	}
	var stdout, stderr strings.Builder
	for {
		for _, om := range w.take() {
			switch om.Header.MsgType {
			case "status":
				var st struct {
					State string `json:"execution_state"`
				}
				if json.Unmarshal(om.Content, &st) == nil && st.State == "idle" {
					res.Stdout, res.Stderr = stdout.String(), stderr.String()
					return res, nil
				}
			case "stream":
				var s struct{ Name, Text string }
				if err := json.Unmarshal(om.Content, &s); err == nil {
					if s.Name == "stderr" {
						stderr.WriteString(s.Text)
					} else {
						stdout.WriteString(s.Text)
					}
				}
				res.Outputs = append(res.Outputs, om)
			case "display_data", "update_display_data", "execute_result", "error", "clear_output":
				res.Outputs = append(res.Outputs, om)
			}
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return nil, fmt.Errorf("jupyter: waiting for idle after execute: %w", ctx.Err())
		case <-c.done:
			return nil, c.Err()
		}
	}
}
