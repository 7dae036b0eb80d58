// Command kstatus prints what kstatus (Flux's fork of sigs.k8s.io/cli-utils/pkg/kstatus, the
// library behind Flux health checks and `wait: true`) computes for each object it reads: a JSON
// array of objects, or a Kubernetes List, on standard input; one JSON line per object on standard
// output with its name, its status (InProgress, Failed, Current, Terminating, NotFound, Unknown)
// and message, or the error kstatus gave.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading standard input:", err)
		os.Exit(2)
	}
	// numbers as the apiserver means them (int64 where whole), as client-go decodes objects
	var objects []map[string]interface{}
	if err := utiljson.Unmarshal(input, &objects); err != nil {
		var list struct {
			Items []map[string]interface{} `json:"items"`
		}
		if err2 := utiljson.Unmarshal(input, &list); err2 != nil {
			fmt.Fprintln(os.Stderr, "kstatus: neither a JSON array nor a List:", err)
			os.Exit(2)
		}
		objects = list.Items
	}
	out := json.NewEncoder(os.Stdout)
	for _, o := range objects {
		u := &unstructured.Unstructured{Object: o}
		v := verdict{Name: u.GetName()}
		result, err := status.Compute(u)
		if err != nil {
			v.Error = err.Error()
		} else {
			v.Status = result.Status.String()
			v.Message = result.Message
		}
		if err := out.Encode(v); err != nil {
			os.Exit(2)
		}
	}
}
